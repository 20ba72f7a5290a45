"""Many training runs: one :class:`Job` per run folder, one skip rule, one runner.

``hallnll train --seeds N`` (:func:`run_seeds`) and ``hallnll reproduce``
(:mod:`hallnll.tools.reproduce`) both hand a list of jobs to :func:`run_jobs`.

A job is one run of :func:`hallnll.train.fit`: a params file, overrides, a
seed and an output folder; it runs in this process, or through a notebook
(``06_training``, executed by :func:`hallnll.tools.notebook.execute`, which calls
``fit`` and keeps the executed notebook in the run folder).

The skip rule (:func:`finished`): a job is done when its folder holds
``summary.json`` and a ``config.yaml`` whose :func:`config_hash` equals the
job's (a setting the saved file lacks, added to Config after the run, counts
at its default); a folder with other settings is run again (``fit`` resumes
from its checkpoint when the noisy labels agree).

``parallel > 1`` runs that many jobs at once in worker processes (on one GPU
they share it). Each worker starts with its share of the CPUs this process may
use (:func:`worker_threads`): ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` /
``OPENBLAS_NUM_THREADS`` for the libraries it loads (and a notebook's kernel),
one inter-op thread and that many torch threads, which a run keeps with
``threads = 0``; otherwise each run uses its config's ``threads`` (1 by
default, as every command), so N workers never ask for more threads than there
are CPUs. A failed job is reported in its result; the others go on.

Each job runs under its folder's run lock (:func:`hallnll.lock.folder_lock`,
handed to the notebook's kernel): a folder another process is running is
reported as a failed job at once, naming the holder. ``run_seeds`` holds OUT.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import Config, inert_settings, load_config
from ..lock import OutputError, folder_lock, passed_to_children
from ..resources import params_path


def config_hash(cfg: Config | dict, ignore=("progress",)) -> str:
    """8 hex digits of the settings of ``cfg`` but ``ignore`` (progress bars do not change a run)
    and those its noise kind does not read (:func:`hallnll.config.inert_settings`)."""
    d = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    skip = set(ignore) | inert_settings(d)
    d = {k: v for k, v in d.items() if k not in skip}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


@dataclass
class Job:
    label: str  # what the log calls it, e.g. "table5/gmm seed0"
    params: str  # params file (a path or a shipped name)
    overrides: list
    seed: int
    out_dir: Path
    notebook: Optional[str] = None  # run through this shipped notebook (e.g. "06_training") instead of fit here
    threads: int = 0  # torch / OpenMP threads; 0 leaves the defaults

    def config(self) -> Config:
        return load_config(self.params, list(self.overrides) + [f"seed={self.seed}"])

    @property
    def executed_notebook(self) -> Optional[Path]:
        return Path(self.out_dir) / f"{self.notebook}.ipynb" if self.notebook else None


def finished(job: Job) -> bool:
    """The skip rule: ``summary.json`` beside a ``config.yaml`` of the same :func:`config_hash`
    (settings missing from the saved file at their defaults)."""
    import yaml

    out = Path(job.out_dir)
    if not (out / "summary.json").is_file() or not (out / "config.yaml").is_file():
        return False
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
    except yaml.YAMLError:
        return False
    if not isinstance(saved, dict):
        return False
    return config_hash({**Config().to_dict(), **saved}) == config_hash(job.config())


def _result(job: Job, t0: float, **fields) -> dict:
    nb = job.executed_notebook
    return {"label": job.label, "seed": job.seed, "out_dir": str(job.out_dir), "notebook": str(nb) if nb else "",
            "seconds": time.perf_counter() - t0, **fields}


def execute(job: Job, resume: bool = True, data=None, noisy=None) -> dict:
    """Run one job (here, or through its notebook). Returns ``{"ok", "summary" | "error",
    "label", "seed", "out_dir", "notebook", "seconds"}``; ``data``/``noisy`` are
    passed to ``fit`` (noisy labels shared by the seeds of ``run_seeds``)."""
    t0 = time.perf_counter()
    out = Path(job.out_dir)
    # the ranks of one DDP run (a SLURM job of several tasks) share the folder: rank 0 holds its lock
    main = int(os.environ.get("RANK", "0")) == 0
    try:
        with (folder_lock(out) if main else contextlib.nullcontext()), \
                (passed_to_children(out) if main else contextlib.nullcontext()):
            _run(job, resume, data, noisy)
    except Exception as e:  # a failed run is reported, the others go on
        return _result(job, t0, ok=False, error=_message(e, job))
    summary = out / "summary.json"
    if not summary.is_file():
        return _result(job, t0, ok=False, error=f"the notebook finished but wrote no {summary}")
    res = _result(job, t0, ok=True, summary=json.loads(summary.read_text()))
    if not job.notebook:  # the threads the run had (a worker's share, see run_jobs)
        import torch

        res["threads"] = {"torch": torch.get_num_threads(), **{k: os.environ.get(k) for k in THREAD_ENV}}
    return res


def _run(job: Job, resume: bool, data, noisy) -> None:
    out = Path(job.out_dir)
    if job.notebook:
        _execute_notebook(job)
    else:
        import torch

        from ..train import fit

        if job.threads:
            torch.set_num_threads(job.threads)
        noisy_t = torch.as_tensor(noisy, dtype=torch.int64) if noisy is not None else None
        fit(job.config(), out, data=data, noisy=noisy_t, resume=resume, progress=False if job.threads else None)


def _execute_notebook(job: Job) -> None:
    from .notebook import execute as execute_notebook
    from ..resources import shipped

    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(params=str(params_path(job.params).resolve()), overrides=list(job.overrides) + ["progress=false"],
                  out_dir=str(out.resolve()), seed=int(job.seed), threads=int(job.threads), plots=True)
    on_slurm = "SLURM_JOB_ID" in os.environ  # a busy node: a longer kernel start, no TCP ports to clash
    execute_notebook(shipped("notebooks", job.notebook), job.executed_notebook, params, threads=job.threads,
                     start_timeout=300 if on_slurm else 60, transport="ipc" if on_slurm else "tcp")


def _message(e: Exception, job: Job) -> str:
    """One line: the notebook's own error (``ename: evalue``) where there is one."""
    from .notebook import first_error

    msg = f"{getattr(e, 'ename', None) or type(e).__name__}: {getattr(e, 'evalue', None) or e}"
    if job.notebook and not getattr(e, "ename", None) and not isinstance(e, OutputError):  # busy: it never ran
        msg = first_error(job.executed_notebook) or msg
    lines = msg.strip().splitlines()
    return lines[-1][:500] if lines else type(e).__name__


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_threads(parallel: int) -> int:
    """CPU threads for each of ``parallel`` workers: the CPUs this process may use, shared out (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, n // max(1, parallel))


def _worker_init(threads: int) -> None:
    """A worker process's share of the CPUs, set before it runs any job: the
    variables for OpenMP / MKL / OpenBLAS (read by the libraries the job
    loads), torch's intra-op threads and one inter-op thread."""
    import signal

    # Ctrl-C reaches the whole process group: a worker stops at once and quietly (its files are written
    # atomically, as for kill -9); the parent says "interrupted"
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    for k in THREAD_ENV:
        os.environ[k] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # inter-op work already ran in this process
        pass


def run_jobs(jobs: list, parallel: int = 1, log=print, resume: bool = True, data=None, noisy=None,
             slurm=None) -> list:
    """Run every job that is not :func:`finished` (all of them without ``resume``),
    ``parallel`` at a time, or, given ``slurm`` (:class:`hallnll.tools.cluster.SlurmOptions`),
    as one SLURM job array (:func:`hallnll.tools.cluster.run_slurm`). Returns one result
    dict per job (``skipped`` for finished ones; ``pending`` for ones left running on SLURM)."""
    results: list = [None] * len(jobs)
    todo = []
    for i, job in enumerate(jobs):
        if resume and finished(job):
            summary = json.loads((Path(job.out_dir) / "summary.json").read_text())
            results[i] = _result(job, time.perf_counter(), ok=True, skipped=True, summary=summary)
            log(f"  skip  {job.label}: finished ({job.out_dir})")
        else:
            todo.append(i)
    n = len(todo)
    if slurm is not None:
        from .cluster import run_slurm

        return run_slurm(jobs, todo, results, slurm, log, resume, noisy) if todo else results

    def report(k, i, r):
        results[i] = r
        if r["ok"]:
            acc = r["summary"].get("best_acc")
            log(f"  [{k}/{n}] done  {jobs[i].label}: best {100 * acc:.2f}% ({r['seconds']:.0f} s)")
        else:
            where = f"\n           notebook: {r['notebook']}" if r["notebook"] else ""
            log(f"  [{k}/{n}] FAILED {jobs[i].label}: {r['error']}{where}")

    parallel = max(1, int(parallel))
    if parallel == 1 or n <= 1:
        for k, i in enumerate(todo, 1):
            log(f"  [{k}/{n}] run   {jobs[i].label} -> {jobs[i].out_dir}")
            report(k, i, execute(jobs[i], resume, data, noisy))
        return results
    threads = worker_threads(min(parallel, n))
    noisy_list = noisy.tolist() if noisy is not None else None  # tensors stay in this process
    with cf.ProcessPoolExecutor(max_workers=min(parallel, n), mp_context=multiprocessing.get_context("spawn"),
                                initializer=_worker_init, initargs=(threads,)) as pool:
        futs = {}
        for i in todo:
            jobs[i].threads = jobs[i].threads or threads
            log(f"  queue {jobs[i].label} -> {jobs[i].out_dir}")
            futs[pool.submit(execute, jobs[i], resume, None, noisy_list)] = i
        for k, fut in enumerate(cf.as_completed(futs), 1):
            i = futs[fut]
            try:
                r = fut.result()
            except Exception as e:  # the worker process itself died
                r = _result(jobs[i], time.perf_counter(), ok=False, error=f"{type(e).__name__}: {e}")
            report(k, i, r)
    return results


def run_seeds(params, overrides, out, seeds: int = 3, parallel: int = 1, resume: bool = True, log=print,
              slurm=None) -> list:
    """``hallnll train --seeds N --parallel M``: seeds cfg.seed .. cfg.seed+N-1 into ``OUT/seed<k>``.

    The data and the noisy labels are made once (they do not depend on the
    seed; classification-based noise trains a CNN) and shared by all seeds.
    Returns one summary dict per seed (``skipped`` for a finished one); a
    failed seed gives ``{"seed", "error", "out_dir"}`` (and ``log``, ``pending``
    on SLURM). ``slurm``: run them as one SLURM job array (:func:`run_jobs`).
    Configuration errors raise before anything runs.
    """
    from ..reporting import atomic_write_text
    from ..train import prepare

    overrides = list(overrides or [])
    cfg = load_config(params, overrides)
    if slurm is not None:
        from .cluster import require_slurm

        require_slurm()  # before anything is written or the noisy labels are made (minutes for C-based noise)
    with folder_lock(out) as out:
        return _run_seeds(params, overrides, cfg, out, seeds, parallel, resume, log, slurm)


def _run_seeds(params, overrides, cfg, out: Path, seeds, parallel, resume, log, slurm) -> list:
    from ..reporting import atomic_write_text
    from ..train import prepare

    jobs = [Job(f"seed{s}", str(params), overrides, s, out / f"seed{s}")
            for s in range(cfg.seed, cfg.seed + max(1, int(seeds)))]
    data = noisy = None
    if not resume or not all(finished(j) for j in jobs):
        data, noisy, rep = prepare(cfg)
        atomic_write_text(out / "noise_report.txt", str(rep) + "\n")
        import torch

        if torch.cuda.is_initialized():  # classification noise trained here: free the cache for the workers
            torch.cuda.empty_cache()
    results = run_jobs(jobs, parallel, log, resume, data, noisy, slurm)
    summaries = []
    for r in results:
        if r["ok"]:
            summaries.append({**r["summary"], **({"skipped": True} if r.get("skipped") else {})})
        else:
            summaries.append({"seed": r["seed"], "error": r["error"], "out_dir": r["out_dir"],
                              "wall_seconds": r["seconds"],
                              **{k: r[k] for k in ("log", "pending", "slurm_job") if k in r}})
    return summaries
