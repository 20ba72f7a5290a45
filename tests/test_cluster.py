"""``--executor slurm`` against a real SLURM (one node, ``.ci/slurm-up.sh``) through submitit.

Skipped with the reason where ``sinfo`` is absent, unless ``HALLNLL_REQUIRE_SLURM=1``
(set by ``.ci/run``), which makes a missing cluster a failure. Digits, tiny schedules;
the jobs import this checkout (``PYTHONPATH``, passed on by ``sbatch``)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import DIGITS_TINY
from hallnll.tools import cli, cluster, jobs

ROOT = Path(__file__).resolve().parents[1]
PARAMS = str(ROOT / "params" / "digits-quick.yaml")
TINY = DIGITS_TINY  # the runs of conftest.digits_tiny_seeds
SETS = sum((["--set", o] for o in TINY), [])
SLURM = ["--executor", "slurm", "--timeout-min", "5", "--cpus", "1", "--mem-gb", "1"]


@pytest.fixture(scope="module")
def slurm():
    """A SLURM controller that answers, and this checkout on the jobs' PYTHONPATH."""
    if shutil.which("sinfo") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        if os.environ.get("HALLNLL_REQUIRE_SLURM") == "1":
            pytest.fail("HALLNLL_REQUIRE_SLURM=1 but SLURM does not answer: run .ci/slurm-up.sh (as root)")
        pytest.skip("no SLURM here (sinfo absent or no controller); .ci/slurm-up.sh starts a one-node cluster")
    pytest.importorskip("submitit")
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + before if before else "")
    yield
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before


#: the run of the time-limit test: 12 epochs of ce (its uninterrupted reference, one thread: 26-69 s on
#: 2026-12-02 on the 2-core dev machine at load average 8-10, python -m pytest -q -n 0 tests/test_cluster.py)
LONG = ["variant=ce", "epochs=12", "warmup_epochs=2", "noise=symmetric", "lr_decay_epoch=0", "progress=false"]
#: its first allocation (and the preempted job's) sleeps this long after every epoch but the first (before that
#: epoch's checkpoint), so that it is still training when SLURM's time-limit signal (10-40 s after its start) or
#: the test's USR2 comes, on any machine, while costing little CPU; the first epoch's checkpoint is written at once (the resume starts from it or a
#: later one); the requeued allocation (SLURM_RESTART_COUNT >= 1) trains at full speed
PAUSE_S = 5.0
SLOW_FIRST_ALLOCATION = f"""\
# on this job's PYTHONPATH only (tests/test_cluster.py): its first allocation pauses after every epoch.
# Lazy (hallnll.run patched when the job imports it): importing torch here would delay submitit's
# signal handler past the earliest signal (10 s after the start) on a busy machine (measured: killed by USR2).
import os
import sys
if os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
    import importlib.abc
    import importlib.machinery

    class _PauseEpochs(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "hallnll.run":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                import time
                epoch = module.Run.epoch

                def paused(self, *a, **k):
                    row = epoch(self, *a, **k)
                    if self.epochs_done > 1:
                        time.sleep({PAUSE_S})
                    return row
                module.Run.epoch = paused
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, _PauseEpochs())
"""


#: when the tests release a requeued job from SLURM's hold: one second on. The requeue revoked the
#: job's credential in the second it happened (slurmd); a relaunch in that same second is refused
#: ("Job N already killed, do not launch batch job", the job FAILED without output: seen in CI on
#: 2026-12-02, and 6 of 6 times here with a requeue in a second's first 15 ms); now+1 is a later second
RELEASE = "starttime=now+1"


def _submit_paused(args, hook) -> int:
    """``hallnll ARGS --no-wait``: the job's first allocation pauses after every epoch but the first
    (SLOW_FIRST_ALLOCATION in ``hook``, put on the PYTHONPATH that sbatch passes on: for this job only)."""
    hook.mkdir(parents=True)
    (hook / "sitecustomize.py").write_text(SLOW_FIRST_ALLOCATION)
    before = os.environ["PYTHONPATH"]
    os.environ["PYTHONPATH"] = str(hook) + os.pathsep + before
    try:
        return cli.main(args + ["--no-wait"])
    finally:
        os.environ["PYTHONPATH"] = before


def _time_limit_args(out) -> list:
    return ["train", PARAMS, *sum((["--set", o] for o in LONG), []), "--out", str(out), "--seeds", "1",
            "--executor", "slurm", "--timeout-min", "1", "--cpus", "1", "--mem-gb", "1"]


@pytest.fixture(scope="module")
def time_limit_job(slurm, tmp_path_factory):
    """The job of the time-limit test (LONG, --timeout-min 1, paused first allocation), submitted
    with --no-wait as early as the module's first test that asks (the seeds test asks first, so
    the 10-40 s until SLURM signals it pass while that test runs; it holds one of the node's CPUs
    meanwhile). Yields (folder, job id, the watching thread, what it saw); cancelled at the end
    where it is still queued."""
    import contextlib
    import io

    base = tmp_path_factory.mktemp("timelimit")
    with contextlib.redirect_stdout(io.StringIO()) as said:
        assert _submit_paused(_time_limit_args(base / "to"), base / "hook") == 0, said.getvalue()
    job_id = json.loads((base / "to" / "seed0" / "slurm_job.json").read_text())["job_id"]
    seen = {}
    watch = threading.Thread(target=_release_when_requeued, args=(job_id, base / "to" / "seed0", seen), daemon=True)
    watch.start()
    yield base, job_id, watch, seen
    seen["stop"] = True
    watch.join(5)
    subprocess.run(["scancel", job_id], capture_output=True)  # a no-op where it has finished


def _release_when_requeued(job_id, run_dir, seen, limit_s=100.0, queue_s=600.0):
    """Watches the job (in a thread, while other tests run): once submitit has requeued it at
    SLURM's signal (scontrol: pending, restarted once), SLURM holds it back a while (BeginTime):
    start it now, and give the resumed part room to finish (its one-minute limit would signal it
    again). ``seen``: what the test asserts (requeued, the run unfinished then, or why not). The
    clock starts when the job runs (the node may be busy with other jobs before)."""
    t0, ran = time.time(), None
    while not seen.get("stop"):
        state, restarts = _job_state(job_id)
        if ran is None and state == "RUNNING":
            ran = time.time()
        if restarts >= 1 and state == "PENDING":
            seen["finished_before_requeue"] = (Path(run_dir) / "summary.json").exists()
            seen["update"] = subprocess.run(["scontrol", "update", f"jobid={job_id}", RELEASE,
                                             "timelimit=10"], capture_output=True, text=True).returncode
            seen["requeued_after_s"] = time.time() - (ran or t0)
            return
        late = time.time() - ran > limit_s if ran is not None else time.time() - t0 > queue_s
        # SIGNALING: SLURM sends the time limit's signal (seen here for a poll, 2026-12-07); REQUEUE_*: submitit requeues
        if state not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SIGNALING", "REQUEUE_FED",
                         "REQUEUE_HOLD", "STAGE_OUT") or late:
            seen["gave_up"] = (f"job {job_id}: {state}, {restarts} restart(s), {time.time() - t0:.0f} s after its "
                               f"submission, {time.time() - ran if ran else 0:.0f} s after its start")
            return
        time.sleep(0.2)


def _job_state(job_id) -> tuple:
    """(JobState, Restarts) of a job (cluster.scontrol_job: scontrol, which, unlike squeue, counts requeues)."""
    info = cluster.scontrol_job(job_id)
    return info.get("JobState"), int(info.get("Restarts", 0))


def _rows(run_dir) -> list:
    """metrics.jsonl without its timings: what must be identical between two runs."""
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_seeds_as_a_job_array_match_the_local_runs_and_report_a_failed_job(slurm, time_limit_job, digits_tiny_seeds,
                                                                           tmp_path, capsys):
    local = digits_tiny_seeds  # the same seeds with --executor process (conftest)
    # time_limit_job: submitted first, its wait for SLURM's signal passes while this test runs
    out = tmp_path / "slurm"
    (out / "seed2").mkdir(parents=True)
    (out / "seed2" / "checkpoint.pt").write_bytes(b"not a checkpoint")  # this job fails; the others land
    rc = cli.main(["train", PARAMS, *SETS, "--out", str(out), "--seeds", "3", *SLURM])
    text = capsys.readouterr().out
    assert rc == 1, text
    assert "submitted 3 run(s) as SLURM job array" in text
    ids = [json.loads((out / f"seed{s}" / "slurm_job.json").read_text())["job_id"] for s in range(3)]
    assert len({i.split("_")[0] for i in ids}) == 1 and ids == [f"{ids[0].split('_')[0]}_{k}" for k in range(3)]
    for s in (0, 1):
        assert _rows(out / f"seed{s}") == _rows(local / f"seed{s}")
        assert json.loads((out / f"seed{s}" / "summary.json").read_text())["best_acc"] == \
            json.loads((local / f"seed{s}" / "summary.json").read_text())["best_acc"]
    failed = [ln for ln in text.splitlines() if ln.startswith("seed 2: FAILED")]
    assert failed and "cannot resume" in failed[0], text
    log = text.split("seed 2: FAILED", 1)[1].split("log: ", 1)[1].splitlines()[0].strip()
    assert Path(log).is_file() and "cannot resume" in Path(log).read_text()
    # a rerun of the finished seeds submits nothing
    assert cli.main(["train", PARAMS, *SETS, "--out", str(out), "--seeds", "2", *SLURM]) == 0
    text = capsys.readouterr().out
    assert "as SLURM job array" not in text and text.count("skip  seed") == 2


def test_preempted_job_is_requeued_and_resumes_with_identical_metrics(slurm, digits_tiny_seeds, tmp_path, capsys):
    local = digits_tiny_seeds
    out = tmp_path / "rq"
    args = ["train", PARAMS, *SETS, "--out", str(out), "--seeds", "1", *SLURM]
    # paused after epochs 2-4 in its first allocation: still running when the signal below comes
    assert _submit_paused(args, tmp_path / "hook") == 0
    assert "submitted 1 run(s)" in capsys.readouterr().out
    job_id = json.loads((out / "seed0" / "slurm_job.json").read_text())["job_id"]
    metrics = out / "seed0" / "metrics.jsonl"
    t0 = time.time()
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):  # a checkpoint after epoch 1
        assert time.time() - t0 < 120, "the job wrote no checkpoint"
        time.sleep(0.1)
    # preemption: SLURM's signal to checkpoint; submitit requeues the task
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    t0 = time.time()
    while "PENDING" not in subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                                          text=True).stdout:
        assert time.time() - t0 < 60, "the job was not requeued"
        time.sleep(0.2)
    # while it waits, the same command submits nothing
    assert cli.main(args + ["--no-wait"]) == 0
    text = capsys.readouterr().out
    assert "still queued: seed0" in text and "as SLURM job array" not in text
    # SLURM holds a requeued job back for a while (BeginTime); let this test cluster start it (RELEASE)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", RELEASE], check=True)
    assert cli.main(args) == 0, capsys.readouterr().out
    summary = json.loads((out / "seed0" / "summary.json").read_text())
    assert summary["resumed_from_epoch"] >= 1 and summary["epochs"] == 4
    assert _rows(out / "seed0") == _rows(local / "seed0")
    assert "DUE TO JOB REQUEUE" in Path(json.loads((out / "seed0" / "slurm_job.json").read_text())["folder"]
                                        .replace("%j", job_id)).joinpath(f"{job_id}_0_log.err").read_text()


def test_a_job_at_its_time_limit_is_requeued_and_resumes_with_identical_metrics(slurm, time_limit_job, capsys):
    """A real timeout: with --timeout-min 1, SLURM itself signals the job (USR2 20 s before the
    limit, SlurmOptions.signal_delay; slurmctld looks every 30 s: 10-40 s after the start),
    submitit calls JobTask.checkpoint and requeues it, and the requeued run resumes from its
    checkpoint.pt with the metrics of the same run uninterrupted (trained here meanwhile).
    The job was submitted by the module's first test (time_limit_job). Its first allocation
    pauses PAUSE_S after every epoch but the first (a sitecustomize on its PYTHONPATH), so it
    lasts 11 x 5 s > the 40 s before the signal on any machine at little CPU cost; the signal
    comes in a pause, after an epoch whose checkpoint is not yet written: that epoch is redone.
    A thread started with the job releases it from SLURM's hold once it is requeued."""
    base, job_id, watch, seen = time_limit_job
    out, ref = base / "to", base / "ref"
    s = jobs.run_seeds(PARAMS, LONG, ref, seeds=1, parallel=1)  # meanwhile, here: the run uninterrupted
    assert all("error" not in x for x in s), s
    watch.join(700)  # requeued at its limit and started again (_release_when_requeued)
    assert "requeued_after_s" in seen, seen.get("gave_up", "the job was not requeued at its time limit")
    assert not seen["finished_before_requeue"], "the run ended before its time limit"
    assert seen["update"] == 0, f"scontrol update {RELEASE} failed"
    capsys.readouterr()
    assert cli.main(_time_limit_args(out)) == 0
    summary = json.loads((out / "seed0" / "summary.json").read_text())
    assert summary["resumed_from_epoch"] >= 1 and summary["epochs"] == 12
    assert _rows(out / "seed0") == _rows(ref / "seed0")
    log = Path(json.loads((out / "seed0" / "slurm_job.json").read_text())["folder"].replace("%j", job_id))
    err = log.joinpath(f"{job_id}_0_log.err").read_text()
    assert err.count("this job is timed-out") == 1 and "DUE TO JOB REQUEUE" in err, err[-2000:]


def test_slurm_absent_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch / squeue / sinfo on it
    rc = cli.main(["train", PARAMS, *SETS, "--out", str(tmp_path / "x"), "--seeds", "2", *SLURM])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --executor slurm: SLURM is not available") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_one_run_over_two_tasks_of_one_job_is_ddp(slurm, tmp_path, capsys):
    out = tmp_path / "ddp"
    sets = sum((["--set", o] for o in ["epochs=3", "warmup_epochs=2", "noise=symmetric", "lr_decay_epoch=0",
                                       "progress=false"]), [])
    assert cli.main(["train", PARAMS, *sets, "--out", str(out), *SLURM, "--tasks", "2"]) == 0
    assert "2 task(s)" in capsys.readouterr().out
    s = json.loads((out / "seed0" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["epochs"] == 3 and s["best_acc"] > 0.5


def test_reproduce_table5_on_slurm_gives_the_process_table(slurm, table5_quick, tmp_path, capsys, monkeypatch):
    """The notebooks of table5 run as SLURM jobs (papermill in the job, kernel over ipc); their rows
    equal those of the --executor process table of the same settings: conftest.table5_quick
    (shared with test_reproduce)."""
    import csv

    from hallnll.tools import reproduce

    from conftest import table5_args

    pytest.importorskip("papermill")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def table(where):
        with open(where / "results" / "table5.csv") as f:
            return [(r["cell"], r["n_seeds"], r["ours_mean"]) for r in csv.DictReader(f)]

    process, _ = table5_quick
    sl = dict(executor="slurm", partition=None, gpus=0, tasks=0, cpus=1, mem_gb=2.0, timeout_min=10,
              array_parallelism=4, no_wait=False, slurm_logs=None)
    # two of the three cells (--cells): an array of two notebook jobs; the third row stays empty
    assert reproduce.main(table5_args(tmp_path / "slurm", cells="gmm,hallnll", **sl)) == 0
    text = capsys.readouterr().out
    assert "submitted 2 run(s) as SLURM job array" in text
    ours, ref = table(tmp_path / "slurm"), table(process)
    assert [r for r in ours if r[0] != "easy"] == [r for r in ref if r[0] != "easy"]
    assert [n for _, n, _ in ours] == ["1", "0", "1"] and ours[1][2] == ""
