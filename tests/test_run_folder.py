"""Nothing lost, nothing mixed (issue 19): one run per folder at a time, a clean
``--no-resume``, checked checkpoints, images read faithfully, and one ``error:``
line (exit 2, nothing written) for every bad input. Digits (200 training images,
symmetric noise, 2 epochs) and tiny image folders built here; one thread."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import hallnll.train as T
from hallnll import load_config
from hallnll.tools.cli import main as cli_main
from hallnll.data import DataError, load_folder
from hallnll.data.sources import to_rgb8
from hallnll.lock import LOCK_NAME, FolderBusy, folder_lock
from hallnll.train import RUN_OUTPUTS, CheckpointError, fit, prepare

ROOT = Path(__file__).resolve().parents[1]
TINY = ["dataset=digits", "noise=symmetric", "noise_rate=0.4", "train_subset=200", "test_subset=100", "epochs=2",
        "warmup_epochs=1", "lr_decay_epoch=0", "threads=1", "progress=false", "batch_size=32"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# hallnll/lock.py alone (standard library only): a process that holds a lock starts in a blink, without torch
IMPORT_LOCK = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('lock', sys.argv[2]); "
               "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); folder_lock = m.folder_lock\n")
LOCK_PY = str(ROOT / "hallnll" / "lock.py")


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("digits-quick", TINY)
    data, noisy, _ = prepare(cfg, progress=False)
    return cfg, data, noisy


def _files(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _one_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- the lock
def test_a_busy_folder_is_refused_at_once_naming_its_holder_and_a_dead_holder_frees_it(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", IMPORT_LOCK + "import time\nwith folder_lock(sys.argv[1]):\n"
                               "    print('held', flush=True); time.sleep(600)", str(out), LOCK_PY],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _files(out)
        # a second train into the folder: one line naming the holder's PID and host, nothing written
        rc = cli_main(["train", "digits-quick", *sum((["--set", s] for s in TINY), []), "--out", str(out)])
        line = _one_error(capsys.readouterr().err)
        assert rc == 2 and f"process {holder.pid} on {socket.gethostname()}" in line and "in use" in line
        assert _files(out) == before and sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
        # the same mechanism for --seeds, fit-folder's report and a job of reproduce / the executors
        rc = cli_main(["train", "digits-quick", *sum((["--set", s] for s in TINY), []), "--seeds", "2", "--out", str(out)])
        assert rc == 2 and str(holder.pid) in _one_error(capsys.readouterr().err)
        from hallnll.tools.jobs import Job, execute

        r = execute(Job("x", "digits-quick", TINY, 0, out))
        assert not r["ok"] and "in use by another hallnll run" in r["error"] and str(holder.pid) in r["error"]
        from hallnll.label_issues import report

        with pytest.raises(FolderBusy):
            report(tiny[0], out)
        assert _files(out) == before
    finally:
        holder.kill()  # kill -9: the kernel releases its flock
        holder.wait()
    with folder_lock(out):  # the dead holder's lock file is free: taken over
        assert f"pid={os.getpid()}" in (out / LOCK_NAME).read_text()
    assert not (out / LOCK_NAME).exists()  # released: the holder removes its file


def test_two_processes_never_hold_one_folder_at_once(tmp_path):
    """Two processes take and release the lock of one folder 50 times each, adding one to a
    counter file (read, then write) under it: no update is lost, the lock file goes with its holder."""
    code = (IMPORT_LOCK + "from pathlib import Path\nout = Path(sys.argv[1])\n"
            "for _ in range(50):\n"
            "    with folder_lock(out, wait=60):\n"
            "        c = out / 'count'; n = int(c.read_text()) if c.exists() else 0; c.write_text(str(n + 1))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"), LOCK_PY], env=ENV) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert (tmp_path / "run" / "count").read_text() == "100"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["count"]


def test_a_refused_run_leaves_no_folder_behind(tmp_path, capsys):
    rc = cli_main(["train", "digits-quick", "--set", "epochs=abc", "--out", str(tmp_path / "new")])
    assert rc == 2 and "epochs" in _one_error(capsys.readouterr().err)
    rc = cli_main(["train", "digits-quick", "--set", "dataset=folder", "--set", "folder_train_csv=/nonexistent/train.csv", "--out", str(tmp_path / "new")])
    assert rc == 2 and not (tmp_path / "new").exists()


# ---------------------------------------------------------------- --no-resume
def test_no_resume_killed_at_each_step_never_mixes_two_runs(tiny, tmp_path, monkeypatch):
    cfg, data, noisy = tiny
    old_dir = tmp_path / "old"
    fit(cfg, old_dir, data=data, noisy=noisy)  # a finished run with lr 0.02
    old = _files(old_dir)
    new_cfg = cfg.replace(lr=0.05)
    distinct = ("config.yaml", "checkpoint.pt", "metrics.jsonl", "summary.json", "labels.csv")
    real_replace, reference, n = os.replace, None, 0
    while reference is None:
        n += 1
        work = tmp_path / f"k{n}"
        shutil.copytree(old_dir, work)
        calls = [0]

        def replace(src, dst, _n=n, _calls=calls):
            _calls[0] += 1
            if _calls[0] == _n:
                raise KeyboardInterrupt  # killed before this rename (every write and every removal is one)
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            fit(new_cfg, work, data=data, noisy=noisy, resume=False)
            reference = _files(work)
        except KeyboardInterrupt:
            pass
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        now = {k: v for k, v in _files(work).items() if k in RUN_OUTPUTS}
        olds = [k for k in distinct if k in now and now[k] == old[k]]
        news = [k for k in distinct if k in now and now[k] != old[k]]
        # the folder describes one run: the old one (its checkpoint still there) or the new one
        assert not (olds and news), (n, olds, news)
        assert not olds or "checkpoint.pt" in olds, (n, olds)
        if n == 4:  # interrupted while the old run was being removed: the same command finishes the job
            again = tmp_path / "again"
            shutil.copytree(work, again)
    assert n > len(RUN_OUTPUTS) + 3  # the removals and the new run's writes were each interrupted once
    fit(new_cfg, again, data=data, noisy=noisy, resume=False)
    redo = _files(again)
    assert json.loads(redo["summary.json"])["best_acc"] == json.loads(reference["summary.json"])["best_acc"]
    assert redo["labels.csv"] == reference["labels.csv"] and redo["config.yaml"] == reference["config.yaml"]


# ---------------------------------------------------------------- checkpoints
def test_a_damaged_checkpoint_that_still_loads_is_refused_as_damaged(tiny, tmp_path, capsys):
    cfg, data, noisy = tiny
    fit(cfg, tmp_path, data=data, noisy=noisy)
    ck = tmp_path / "checkpoint.pt"
    before = _files(tmp_path)
    state = torch.load(ck, weights_only=False)
    name = next(k for k, v in state["model"].items() if v.dtype.is_floating_point and v.numel() > 100)
    state["model"][name] = torch.zeros_like(state["model"][name])  # one weight tensor overwritten
    torch.save(state, ck)
    with pytest.raises(CheckpointError, match=r"damaged.*checksum.*--no-resume"):
        fit(cfg, tmp_path, data=data, noisy=noisy)
    raw = bytearray(before["checkpoint.pt"])  # 200 bytes flipped in the middle of the file
    mid = len(raw) // 2
    raw[mid:mid + 200] = bytes(b ^ 0xFF for b in raw[mid:mid + 200])
    ck.write_bytes(bytes(raw))
    rc = cli_main(["train", "digits-quick", *sum((["--set", s] for s in TINY), []), "--out", str(tmp_path)])
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "damaged" in line and "other labels" not in line and "--no-resume" in line
    assert {k: v for k, v in _files(tmp_path).items() if k != "checkpoint.pt"} == \
        {k: v for k, v in before.items() if k != "checkpoint.pt"}  # labels.csv and summary.json untouched


# ---------------------------------------------------------------- resume says so; finished does nothing
def test_ctrl_c_then_the_same_command_resumes_saying_so_then_does_no_work(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["train", "digits-quick", *sum((["--set", s] for s in [*TINY, "epochs=40"]), []), "--out", str(out)]
    # SIGINT at its default in the child: a shell's background job (no job control) inherits it
    # ignored, and Python then installs no KeyboardInterrupt handler, so Ctrl-C would do nothing
    p = subprocess.Popen([sys.executable, "-m", "hallnll", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV, cwd=ROOT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while not (out / "checkpoint.pt").exists() and time.time() - t0 < 120 and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted — run the same command to resume" in err and "Traceback" not in err, err
    done = torch.load(out / "checkpoint.pt", weights_only=False)["epoch"]
    # the same command (shorter: epochs may change) says where it resumes
    short = [a if a != "epochs=40" else f"epochs={done + 1}" for a in argv]
    assert cli_main(short) == 0
    assert f"resuming {out} from epoch {done} of {done + 1}" in capsys.readouterr().err
    # finished: nothing runs, no noise is made, no file is rewritten, and it says where the results are
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    monkeypatch.setattr(T, "make_noisy_labels", lambda *a, **k: pytest.fail("noise made again"))
    assert cli_main(short) == 0
    cap = capsys.readouterr()
    assert "finished already" in cap.err and f"the results are in {out}/" in cap.out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


# ---------------------------------------------------------------- images
def _csv(root, rows, name="train.csv"):
    with open(root / name, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return root / name


def test_every_image_mode_is_read_as_a_viewer_shows_it(tmp_path):
    from PIL import Image

    g = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 4).astype(np.uint8)  # a grey ramp 0..252
    rgb = np.stack([g, 255 - g, np.full_like(g, 77)], -1)
    Image.fromarray(g).save(tmp_path / "g8.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # its 16-bit twin
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    Image.fromarray(g.astype(np.float32) / 255).save(tmp_path / "gf.tiff")  # float in [0, 1]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tiff")
    Image.fromarray(rgb).quantize(16).save(tmp_path / "pal.png")
    alpha = np.where(np.arange(64).reshape(8, 8) % 2, 255, 0).astype(np.uint8)  # every other pixel transparent
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([g, alpha]), "LA").save(tmp_path / "la.png")
    names = ["g8.png", "g16.png", "gf.tiff", "rgb.png", "cmyk.tiff", "pal.png", "rgba.png", "la.png"]
    d = load_folder(_csv(tmp_path, [(n, "ab"[i % 2]) for i, n in enumerate(names)]), image_size=8)
    x = {n: d.x_train[i].permute(1, 2, 0).numpy().astype(int) for i, n in enumerate(names)}
    assert np.array_equal(x["g16.png"], x["g8.png"]) and np.array_equal(x["gf.tiff"], x["g8.png"])
    assert np.abs(x["cmyk.tiff"] - x["rgb.png"]).max() <= 1
    pal = np.asarray(Image.open(tmp_path / "pal.png").convert("RGB")).astype(int)
    assert np.array_equal(x["pal.png"], pal)
    opaque = alpha == 255
    assert np.array_equal(x["rgba.png"][opaque], rgb[opaque]) and (x["rgba.png"][~opaque] == 255).all()
    assert np.array_equal(x["la.png"][opaque][:, 0], g[opaque]) and (x["la.png"][~opaque] == 255).all()
    # a mode with no faithful reading is refused, naming the file
    Image.fromarray((np.arange(64, dtype=np.float32).reshape(8, 8) - 10) * 100).save(tmp_path / "neg.tiff")
    with pytest.raises(DataError, match=r"neg\.tiff.*float image with values -1000\.\.5300"):
        load_folder(_csv(tmp_path, [("neg.tiff", "a"), ("g8.png", "b")], "neg.csv"), image_size=8)
    with pytest.raises(ValueError, match="mode 'HSV'"):
        to_rgb8(Image.fromarray(rgb).convert("HSV"))


# ---------------------------------------------------------------- fit-folder: data too small for the folds
def test_fit_folder_refuses_one_class_and_classes_smaller_than_the_folds_up_front(tmp_path, capsys):
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    one = _csv(tmp_path, [(f"{i}.png", "cat") for i in range(5)], "one.csv")
    rare = _csv(tmp_path, [(f"{i}.png", "cat") for i in range(4)] + [("4.png", "dog")], "rare.csv")
    out = tmp_path / "out"
    assert cli_main(["fit-folder", str(one), "--out", str(out), "--set", "threads=1"]) == 2
    assert "one class only ('cat')" in _one_error(capsys.readouterr().err)
    assert cli_main(["fit-folder", str(rare), "--out", str(out), "--set", "threads=1"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "label_folds=2" in line and "'dog': 1" in line and "label_folds=0" in line
    (tmp_path / "latin.csv").write_bytes("path,label\n0.png,chat\xe9\n1.png,dog\n".encode("latin-1"))
    for argv, match in ((["latin.csv"], "is not UTF-8 text (byte 21)"), (["rare.csv", "--test", "."], "is a folder"),
                        (["rare.csv", "--test", "nope.csv"], "not found"), ([str(tmp_path)], "is a folder")):
        argv = [str(tmp_path / a) if a.endswith(".csv") or a == "." else a for a in argv]
        assert cli_main(["fit-folder", *argv, "--out", str(out)]) == 2
        assert match in _one_error(capsys.readouterr().err)
    assert not out.exists()


# ---------------------------------------------------------------- bad output locations, first of all
def _bad_outputs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return [(a_file, "is a file"), (a_file / "sub", "is a file, not a folder"),
            (Path("/proc/hallnll-out"), "cannot be written")]  # /proc takes no new file, root or not


@pytest.mark.parametrize("command", ["train", "train-seeds", "fit-folder", "reproduce", "reproduce-runs", "noise",
                                     "quickstart", "fidelity", "bench"])
def test_an_output_that_cannot_be_written_is_one_error_before_any_work(command, tmp_path, capsys):
    for bad, why in _bad_outputs(tmp_path):
        argv = {"train": ["train", "digits-quick", "--out", str(bad)],
                "train-seeds": ["train", "digits-quick", "--seeds", "2", "--out", str(bad)],
                "fit-folder": ["fit-folder", str(tmp_path / "missing.csv"), "--out", str(bad)],
                "reproduce": ["reproduce", "table5", "--results", str(bad), "--runs", str(tmp_path / "r")],
                "reproduce-runs": ["reproduce", "table5", "--runs", str(bad), "--results", str(tmp_path / "res")],
                "noise": ["noise", "digits-quick", "--out", str(bad / "x.csv" if why == "cannot be written" else bad)],
                # (noise --out an existing file writes over it; a folder is its "wrong kind")
                "quickstart": ["quickstart", "--out", str(bad)],
                "fidelity": ["fidelity", "--out", str(bad)],
                "bench": ["bench", "--json", str(bad / "b.json" if why == "cannot be written" else bad)]}[command]
        if command in ("noise", "bench") and bad.name == "a_file":
            argv[-1] = str(bad := tmp_path)
        t0 = time.perf_counter()
        assert cli_main(argv) == 2, (command, bad)
        line = _one_error(capsys.readouterr().err)
        assert str(bad) in line, line
        assert time.perf_counter() - t0 < 5  # before the data, the noise, the notebooks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing written


def test_a_read_only_folder_is_refused(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into a 0o555 folder: the unwritable case is /proc in the test above")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert cli_main(["train", "digits-quick", "--out", str(ro / "run")]) == 2
        assert "cannot be written" in _one_error(capsys.readouterr().err)
        assert cli_main(["noise", "digits-quick", "--out", str(ro / "x.csv")]) == 2
        assert "cannot be written" in _one_error(capsys.readouterr().err)
    finally:
        ro.chmod(0o755)


def test_a_noise_csv_into_a_folder_is_refused(tmp_path, capsys):
    assert cli_main(["noise", "digits-quick", "--out", str(tmp_path)]) == 2
    assert "is a folder" in _one_error(capsys.readouterr().err)


# ---------------------------------------------------------------- the settings
@pytest.mark.parametrize("text, match", [
    ("epochs: 3\n\tlr: 0.1\n", r"line 2, column 1.*tabs"),
    ("epochs: [3\n", r"not valid YAML: expected ',' or ']'.* line 2"),
    ("epochs: 3\nlr 0.1\nwidth: 4: 5\n", r"not valid YAML.*line 3"),
    (b"name: caf\xe9\n", r"not UTF-8"),
    ("- epochs\n", r"must hold a mapping"),
])
def test_a_broken_params_file_is_one_error_line(text, match, tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert cli_main(["train", str(p), "--out", str(tmp_path / "o")]) == 2
    line = _one_error(capsys.readouterr().err)
    import re

    assert re.search(match, line), line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, match", [
    (["--set", "epochs=["], "not valid YAML"), (["--set", "=5"], "key is empty"), (["--set", "epochs"], "key=value"),
    (["--seeds", "0"], "--seeds 0"), (["--parallel", "0"], "--parallel 0"), (["--set", "epochs=abc"], "epochs"),
    (["--set", "device=cuda:7"], "device"), (["--set", "nope=1"], "unknown key 'nope'"),
])
def test_bad_arguments_are_one_error_line(argv, match, tmp_path, capsys):
    assert cli_main(["train", "digits-quick", *argv, "--out", str(tmp_path / "o")]) == 2
    assert match in _one_error(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()
    assert cli_main(["train", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is a folder" in _one_error(capsys.readouterr().err)


# ---------------------------------------------------------------- reproduce
@pytest.mark.parametrize("bad", ["epochs=abc", "nope=1"])
def test_reproduce_checks_its_settings_before_any_cell_and_keeps_the_table(bad, tmp_path, capsys):
    res = tmp_path / "results"
    res.mkdir()
    (res / "table5.md").write_text("the previous table\n")
    (res / "table5.csv").write_text("table,cell\n")
    before = _files(res)
    rc = cli_main(["reproduce", "table5", "--set", bad, "--results", str(res), "--runs", str(tmp_path / "runs")])
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "nothing was run" in line and bad.split("=")[0] in line
    assert _files(res) == before and not (tmp_path / "runs").exists()
