"""One run over two processes: ``torchrun --standalone --nproc_per_node 2`` with gloo on digits
(hallnll.distributed). The rank-by-rank checks are in tests/ddp_check.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tests" / "ddp_check.py"


def _torchrun(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(CHECK), *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def _kill_tree(pid: int) -> None:
    """kill -9 torchrun and every process under it (its workers run in sessions of their own,
    so killing torchrun's process group would leave them running)."""
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(p)], capture_output=True, text=True).stdout.split()
        todo += [int(k) for k in kids]
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _rows(d) -> list:
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"}
            for x in (Path(d) / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_score_all_samples_once_agree_on_the_selection_and_resume_after_kill(tmp_path):
    pytest.importorskip("torch.distributed")
    a, b = tmp_path / "a", tmp_path / "b"
    p = _torchrun(a)
    text, _ = p.communicate(timeout=300)
    assert p.returncode == 0, text
    assert "identical on both ranks" in text
    assert (a / "summary.json").is_file() and json.loads((a / "summary.json").read_text())["epochs"] == 4
    # kill -9 the whole two-rank run after its first checkpoint, then resume it
    p = _torchrun(b, "fit-only")
    t0 = time.time()
    while not ((b / "metrics.jsonl").is_file() and (b / "metrics.jsonl").read_text().count("\n") >= 2):
        assert p.poll() is None and time.time() - t0 < 240, p.stdout.read() if p.poll() is not None else "slow"
        time.sleep(0.05)
    _kill_tree(p.pid)
    p.wait()
    assert not (b / "summary.json").exists(), "the run finished before it was killed"
    p = _torchrun(b, "fit-only")
    text, _ = p.communicate(timeout=300)
    assert p.returncode == 0, text
    s = json.loads((b / "summary.json").read_text())
    assert s["resumed_from_epoch"] >= 2 and s["epochs"] == 4
    assert _rows(b) == _rows(a)  # identical to the uninterrupted two-rank run
