"""Runs on a SLURM cluster: the jobs of :func:`hallnll.tools.jobs.run_jobs` as one job array, through submitit.

``hallnll train ... --seeds N --executor slurm`` and ``hallnll reproduce TABLE
--executor slurm`` hand the jobs that are not :func:`hallnll.tools.jobs.finished`
(the one skip rule) to :func:`run_slurm`, which submits them as **one job
array** (submitit's ``AutoExecutor`` in a ``batch()``) with the resources of
:class:`SlurmOptions`, and waits for them (``wait=False``: submits and returns).

- Each array task runs :class:`JobTask` (a ``submitit.helpers.Checkpointable``):
  :func:`hallnll.tools.jobs.execute`, as a local worker does. On preemption or
  timeout (SLURM signals ``USR2`` ``signal_delay_s`` before the limit; a
  ``scancel --signal=USR2`` does the same) submitit calls its ``checkpoint``,
  which resubmits the same call, and requeues the task: the requeued run
  resumes from its ``checkpoint.pt`` (:func:`hallnll.train.fit`), so its
  metrics are those of an uninterrupted run. ``fit`` saves every
  ``checkpoint_every`` epochs: the work since the last save is redone.
- A task's SLURM id is kept in its run folder (``slurm_job.json``). A job whose
  recorded id is still in ``squeue`` is not submitted again: the command waits
  for it (or, ``wait=False``, leaves it), so running the same command twice
  submits nothing for finished or running jobs.
- submitit's logs and pickles go to ``OPTIONS.folder/%j`` (default
  ``slurm/`` in the folder that holds the run folders). A failed task is reported with its
  error's last line and the path of its log; the others' results still land.

submitit is an optional dependency (``pip install -e ".[cluster]"``); this
module is imported only when ``--executor slurm`` is asked for. Without SLURM
(no ``sbatch``/``squeue``, or no controller answering) :func:`require_slurm`
raises one :class:`ClusterError` that says so.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import ConfigError

RECORD = "slurm_job.json"  # in a run folder: the SLURM id of the task that runs it


class ClusterError(ConfigError):
    """``--executor slurm`` cannot run here (no SLURM, no submitit, bad options)."""


@dataclass
class SlurmOptions:
    """What every task of the array asks SLURM for (``hallnll train/reproduce --executor slurm``).

    ``timeout_min`` is always passed (submitit's own defaults are 2-5
    minutes); ``signal_delay_s``: how long before the limit SLURM signals the
    task to checkpoint and requeue (submitit's default, 90 s)."""
    partition: Optional[str] = None
    gpus: int = 0  # per job
    tasks: int = 0  # processes per job, the DDP ranks of its run (hallnll.distributed); 0: one per GPU, at least 1
    cpus: int = 1  # per process; also its torch / OpenMP threads
    mem_gb: float = 4.0
    timeout_min: int = 60
    array_parallelism: int = 32
    wait: bool = True
    folder: Optional[Path] = None  # submitit's logs; default: slurm/ beside the run folders
    signal_delay_s: int = 90
    poll_s: float = 1.0

    def signal_delay(self) -> int:
        """``signal_delay_s``, at most a third of the time limit. slurmctld looks every 30 s and
        signals when fewer than delay + 30 s are left, so a delay of half a short limit or more
        (90 s, or 30 s, of a 1-minute limit) signals every allocation at its start, before
        submitit's handler is installed (measured: the task dies of the signal, unrequeued).
        A 1-minute limit: signalled 10-40 s after the start."""
        return int(min(self.signal_delay_s, int(self.timeout_min) * 20))

    @property
    def ntasks(self) -> int:
        return int(self.tasks) if self.tasks else max(1, int(self.gpus))

    def check(self) -> None:
        for name in ("cpus", "timeout_min", "array_parallelism"):
            if int(getattr(self, name)) < 1:
                raise ClusterError(f"--{name.replace('_', '-')} {getattr(self, name)}: give at least 1")
        if self.gpus < 0 or self.mem_gb <= 0:
            raise ClusterError(f"--gpus {self.gpus} / --mem-gb {self.mem_gb}: give gpus >= 0 and mem-gb > 0")


def require_slurm():
    """submitit, imported; or one :class:`ClusterError` saying what is missing."""
    missing = [c for c in ("sbatch", "squeue", "sinfo") if shutil.which(c) is None]
    if missing:
        raise ClusterError(f"--executor slurm: SLURM is not available on this machine ({', '.join(missing)} not "
                           f"found); run on a cluster's login node, or use --executor process (the default)")
    try:
        import submitit
    except ImportError:
        raise ClusterError("--executor slurm needs submitit: pip install -e '.[cluster]' "
                           "(or pip install 'hallnll[cluster]')") from None
    proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
        raise ClusterError(f"--executor slurm: the SLURM controller does not answer (sinfo: {last}); "
                           f"check that slurmctld runs, or use --executor process")
    return submitit


try:  # the task class needs submitit; this module is imported only when it is asked for
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - require_slurm says what to install
    _Checkpointable = object


class JobTask(_Checkpointable):
    """One array task: :func:`hallnll.tools.jobs.execute` with the task's CPUs as its threads.

    ``checkpoint`` (submitit's ``Checkpointable``) resubmits the same call on
    preemption or timeout; the requeued call resumes from ``checkpoint.pt``.
    With ``tasks > 1`` the job's tasks are the ranks of one DDP run: submitit's
    ``TorchDistributedEnvironment`` exports ``MASTER_ADDR``/``MASTER_PORT``,
    ``RANK``, ``WORLD_SIZE`` for :func:`hallnll.distributed.setup`."""

    def __call__(self, job, resume: bool = True, noisy=None) -> dict:
        from .jobs import _worker_init, execute

        import submitit

        if submitit.JobEnvironment().num_tasks > 1:  # one run over the job's tasks: DDP (hallnll.distributed)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if job.threads:
            _worker_init(job.threads)
        r = execute(job, resume, None, noisy)
        if not r["ok"]:
            print(f"hallnll: {job.label} failed: {r['error']}", file=sys.stderr, flush=True)
        return r

    def checkpoint(self, job, resume: bool = True, noisy=None):
        """The call the requeued task makes: the same run, resuming (also after ``--no-resume``)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, job, True, noisy)


def _queued(job_ids) -> Optional[set]:
    """The ids among ``job_ids`` that SLURM still has pending, running or requeued (or in a state
    between: signalled at its time limit, staging out, stopped); None where squeue itself failed
    (a busy controller): unknown, not gone."""
    if not job_ids:
        return set()
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-t", "PD,R,CG,CF,RQ,RS,S,RH,RF,SI,SO,ST", "-j",
                           ",".join(job_ids)],
                          capture_output=True, text=True)
    return set(proc.stdout.split()) & set(job_ids) if proc.returncode == 0 else None


def scontrol_job(job_id) -> dict:
    """``scontrol show job -o`` of a job as a dict (JobState, Reason, Restarts, ...; unlike squeue it
    counts requeues and keeps an ended job for ``MinJobAge``); {} where SLURM does not know it."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    return dict(kv.split("=", 1) for kv in proc.stdout.split() if "=" in kv) if proc.returncode == 0 else {}


def _slurm_state(job_id) -> str:
    """How SLURM ended a job that left the queue (:func:`scontrol_job`): e.g.
    ``FAILED (NonZeroExitCode), requeued 1x``; "" where it no longer knows."""
    info = scontrol_job(job_id)
    if "JobState" not in info:
        return ""
    reason = info.get("Reason", "None")
    restarts = int(info.get("Restarts", "0") or 0)
    return (info["JobState"] + (f" ({reason})" if reason not in ("None", "") else "")
            + (f", requeued {restarts}x" if restarts else ""))


def _read_record(out_dir) -> Optional[dict]:
    try:
        rec = json.loads((Path(out_dir) / RECORD).read_text())
        return rec if isinstance(rec, dict) and "job_id" in rec and "folder" in rec else None
    except (OSError, ValueError):
        return None


def _last_line(path) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:500] if lines else ""


def _outcome(job, task, t0: float, died: bool = False) -> dict:
    """The result dict of a finished task: its own (``execute``'s) or, when the task
    itself died (``died``: it left the queue without a result), ``ok=False`` with
    its log's last line; ``log``: its stderr file."""
    from .jobs import _result

    log = str(task.paths.stderr)
    if died:  # SLURM's word on it first: the log's last line may be an earlier allocation's
        state = _slurm_state(task.job_id)
        line = _last_line(task.paths.stderr)
        error = ("the task left the SLURM queue without a result" + (f" (SLURM: {state})" if state else "")
                 + (f"; its log ends: {line}" if line else ""))
        return _result(job, t0, ok=False, error=error, log=log, slurm_job=task.job_id)
    try:
        r = task.results()[0]  # rank 0's, under DDP
    except Exception as e:  # the task died: submitit's error holds the log's tail
        line = _last_line(task.paths.stderr) or str(e).strip().splitlines()[-1][:500]
        return _result(job, t0, ok=False, error=line, log=log, slurm_job=task.job_id)
    if not isinstance(r, dict):
        return _result(job, t0, ok=False, error=f"the task returned {type(r).__name__}", log=log, slurm_job=task.job_id)
    return {**r, "log": log, "slurm_job": task.job_id}


def run_slurm(jobs: list, todo: list, results: list, opts: SlurmOptions, log=print, resume: bool = True,
              noisy=None) -> list:
    """Submit ``jobs[i]`` for ``i`` in ``todo`` as one job array (tasks already queued are
    left to run), wait for them unless ``opts.wait`` is false, and fill ``results``.

    A job left running (``wait=False``) gets ``{"ok": False, "pending": True, ...}``."""
    from .jobs import _result
    from ..reporting import atomic_write_text

    opts.check()
    submitit = require_slurm()
    import os

    folder = Path(opts.folder) if opts.folder else Path(os.path.commonpath([str(Path(j.out_dir).resolve().parent)
                                                                            for j in jobs])) / "slurm"
    noisy_list = noisy.tolist() if noisy is not None and hasattr(noisy, "tolist") else noisy
    records = {i: _read_record(jobs[i].out_dir) for i in todo}
    running = _queued([r["job_id"] for r in records.values() if r])
    if running is None:  # never submit twice what SLURM may still run
        raise ClusterError("--executor slurm: squeue failed (the controller is busy or down); "
                           "run the same command again in a moment")
    tasks, t0 = {}, time.perf_counter()
    for i in todo:
        rec = records[i]
        if rec and rec["job_id"] in running:
            tasks[i] = submitit.SlurmJob(folder=rec["folder"], job_id=rec["job_id"])
            log(f"  still queued: {jobs[i].label} (SLURM job {rec['job_id']}); not submitted again")
    new = [i for i in todo if i not in tasks]
    if new:
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
        params = dict(timeout_min=int(opts.timeout_min), cpus_per_task=int(opts.cpus), mem_gb=float(opts.mem_gb),
                      tasks_per_node=opts.ntasks, nodes=1,  # ntasks > 1: the ranks of one DDP run (JobTask)
                      slurm_array_parallelism=int(opts.array_parallelism),
                      slurm_signal_delay_s=opts.signal_delay(), name="hallnll")
        if opts.gpus:
            params["gpus_per_node"] = int(opts.gpus)
        if opts.partition:
            params["slurm_partition"] = opts.partition
        ex.update_parameters(**params)
        submitted = []
        with ex.batch():
            for i in new:
                jobs[i].threads = jobs[i].threads or int(opts.cpus)
                submitted.append(ex.submit(JobTask(), jobs[i], resume, noisy_list))
        for i, task in zip(new, submitted):
            tasks[i] = task
            Path(jobs[i].out_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(jobs[i].out_dir) / RECORD,
                              json.dumps({"job_id": task.job_id, "folder": str(folder.resolve() / "%j")}) + "\n")
        ids = [t.job_id for t in submitted]
        log(f"  submitted {len(new)} run(s) as SLURM job array {ids[0].split('_')[0]} "
            f"({opts.ntasks} task(s) x {opts.cpus} CPU(s), {opts.gpus} GPU(s), {opts.mem_gb:g} GB, "
            f"{opts.timeout_min} min each; "
            f"logs under {folder})")
    if not opts.wait:
        for i, task in tasks.items():
            results[i] = _result(jobs[i], t0, ok=False, pending=True, slurm_job=task.job_id,
                                 error=f"submitted as SLURM job {task.job_id}, not finished yet",
                                 log=str(task.paths.stderr))
        log(f"  --no-wait: {len(tasks)} run(s) queued; run the same command again to collect them")
        return results
    left, n, k, gone = dict(tasks), len(tasks), 0, {}
    while left:
        for i, task in list(left.items()):
            # its result file, else whether SLURM still has it (squeue: works without accounting, where
            # submitit's own check, sacct, does not)
            done = task.paths.result_pickle.exists()
            if not done:
                queued = _queued([task.job_id])
                if queued is not None:  # None: squeue failed, which counts neither way
                    gone[i] = 0 if task.job_id in queued else gone.get(i, 0) + 1
            died = not done and gone.get(i, 0) >= 5  # left the queue without a result (killed): reported as failed
            if done or died:
                k += 1
                r = _outcome(jobs[i], left.pop(i), t0, died)
                results[i] = r
                if r["ok"]:
                    log(f"  [{k}/{n}] done  {jobs[i].label}: best {100 * r['summary'].get('best_acc', 0):.2f}% "
                        f"(SLURM job {r['slurm_job']})")
                else:
                    log(f"  [{k}/{n}] FAILED {jobs[i].label}: {r['error']}\n           log: {r['log']}")
        if left:
            time.sleep(opts.poll_s)
    return results
