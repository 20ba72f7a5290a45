"""One run over two processes: ``torchrun --standalone --nproc_per_node 2`` with gloo on digits
(hallnll.distributed). The rank-by-rank checks are in tests/ddp_check.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DIGITS_TINY
from hallnll import load_config

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tests" / "ddp_check.py"
PARAMS = ROOT / "params" / "digits-quick.yaml"
#: the run of tests/ddp_check.py
TINY = ["variant=hallnll", *DIGITS_TINY]


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


def test_two_ranks_score_all_samples_once_agree_on_the_selection_and_resume_after_kill(tmp_path, request):
    pytest.importorskip("torch.distributed")
    a, b = tmp_path / "a", tmp_path / "b"
    p = _torchrun(a)
    # the same run in one process (the same global batch), seeds 0, 1, 2: conftest.digits_tiny_seeds
    # (made once per session, shared with tests/test_cluster.py; here meanwhile where not made yet)
    assert load_config(PARAMS, TINY) == load_config(PARAMS, DIGITS_TINY)
    runs = request.getfixturevalue("digits_tiny_seeds")
    one = [json.loads((runs / f"seed{s}" / "summary.json").read_text())["last_acc"] for s in range(3)]
    text, _ = p.communicate(timeout=300)
    assert p.returncode == 0, text
    assert "identical on both ranks" in text
    two = json.loads((a / "summary.json").read_text())
    assert two["epochs"] == 4 and two["world_size"] == 2
    # The two-rank run draws its own batches and augmentations (every rank its shard of the
    # global batch), so it is one more seed of the same run: its final accuracy within the seed
    # spread of the one-process runs. The bound: a 99% prediction interval for a 4th draw from
    # 3 (Student's t, 2 degrees of freedom: 9.925 * s * sqrt(1 + 1/3)), s at least one test image
    # (1/450): wide (3 seeds say little about the spread), but a DDP run that trains on part of
    # the data, mixes the ranks' gradients wrongly or evaluates other weights ends far outside.
    mean, sd = statistics.mean(one), max(statistics.stdev(one), 1 / 450)
    bound = 9.925 * sd * (1 + 1 / 3) ** 0.5
    assert abs(two["last_acc"] - mean) <= bound, (two["last_acc"], one, bound)
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
