"""Reproduce the paper's tables: papermill batches of ``notebooks/06_training.ipynb``.

    hallnll reproduce --list                       # every table, its cells and what each needs
    hallnll reproduce table5                       # quick scale: digits on the CPU, minutes
    hallnll reproduce table2 --scale paper --seeds 3 --parallel 2
    hallnll reproduce all --scale quick

:data:`TABLES` describes each reproducible table: one :class:`Cell` per
number of the paper's "Ours" row, with its params file, the overrides that
make the cell, and the paper's mean and std (over three runs).

Scales
    ``paper``: the params files as they are (CIFAR, ResNet-34, 200-300
    epochs: GPU work). ``quick``: the same cells on digits on the CPU in
    minutes. Each cell keeps its method settings (variant, P, lambda_conf,
    lambda_mse, lambda_p, K, easy selection) while dataset, model and
    schedule come from ``params/digits-quick.yaml`` with a short schedule
    (:data:`QUICK_SCHEDULE`). The noise is the cell's kind where it can be
    made on digits (PTD, classification-based, symmetric, asymmetric) at the
    cell's rate; the CIFAR-N, published C-based CSV and Clothing1M cells fall
    back to digits with classification-based noise at the cell's rate, and
    the result tables say so. Quick numbers are not comparable to the paper's
    CIFAR numbers; the paper's column is there for orientation.

Runs
    Every (cell, seed) is one execution of ``06_training.ipynb`` (papermill;
    parameters ``params``, ``overrides``, ``out_dir``, ``seed``, ``threads``)
    with the repository root as working directory; the notebook's
    :func:`hallnll.train.fit` writes ``summary.json`` (and metrics.jsonl,
    labels.csv, config.yaml, checkpoint.pt) into the run folder, and the
    executed notebook is kept beside them as ``06_training.ipynb``. Run
    folders are ``RUNS/SCALE/CONFIG-HASH/seedK``, the hash taken over the
    whole resolved configuration (seed and name aside), so cells of
    different tables with the same settings (Table 5 "hallnll", Table 7
    P=0.4, Table 8 lambda_conf=0.8, Table 2 40%) share their runs, and a
    change of any setting gives a new folder. A run whose ``summary.json``
    exists is not redone. A failed run is reported with its executed
    notebook and the error; the others go on.

Results
    ``RESULTS/TABLE.md`` and ``RESULTS/TABLE.csv``: per cell our mean ± std
    of the best test accuracy (%) over the finished seeds (std with ddof=1;
    0 for one seed), the number of seeds, the paper's number and the
    difference (ours - paper, percentage points).

:func:`run_seeds` serves ``hallnll train --seeds N --parallel N``.
"""
from __future__ import annotations

import concurrent.futures as cf
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "06_training.ipynb"
QUICK_PARAMS = "params/digits-quick.yaml"
#: the short schedule of ``--scale quick`` (15 epochs, 5 of warm-up, lr / 10 at 12)
QUICK_SCHEDULE = ("epochs=15", "warmup_epochs=5", "lr_decay_epoch=12")
#: settings of a cell that ``--scale quick`` keeps (the method's, not the data's)
METHOD_KEYS = ("variant", "p", "lambda_conf", "lambda_mse", "lambda_p", "k", "easy_selection", "gmm_threshold")
#: noise kinds that can be made on digits
DIGITS_NOISE = ("ptd", "classification", "symmetric", "asymmetric", "none")
KERNEL_NAME = "python3"
OWN_KERNEL_NAME = "hallnll-python"


class ReproduceError(ConfigError):
    """Unknown table, bad scale or seeds: the message lists the choices."""


@dataclass(frozen=True)
class Cell:
    """One number of a table's "Ours" row."""

    key: str  # short id, used in the results files
    label: str  # as the paper's column header
    params: str  # params file, relative to the repository root
    overrides: tuple = ()  # key=value settings on top of the params file
    paper_mean: Optional[float] = None  # % (the paper's "Ours")
    paper_std: Optional[float] = None
    quick_noise_rate: Optional[float] = None  # quick fallback rate where the params file has none


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    cells: tuple
    note: str = ""


_IDN = ".data/noisy-labels/cifar10-classification-idn"

TABLES = {
    "table1": Table("table1", "Table 1: CIFAR-10 with PTD label noise (Xia et al., 2020)", (
        Cell("ptd-20", "PTD 20%", "params/cifar10-ptd-20.yaml", (), 94.26, 0.19),
        Cell("ptd-40", "PTD 40%", "params/cifar10-ptd-40.yaml", (), 95.28, 0.10),
    )),
    "table2": Table("table2", "Table 2: CIFAR-10 with classification-based label noise (Chen et al., 2021)", (
        Cell("cbased-10", "10%", "params/cifar10-cbased-10-20.yaml",
             (f"noise_file={_IDN}/dependent0.1.csv", "noise_rate=0.1"), 93.68, 0.47),
        Cell("cbased-20", "20%", "params/cifar10-cbased-10-20.yaml",
             (f"noise_file={_IDN}/dependent0.2.csv", "noise_rate=0.2"), 92.98, 0.11),
        Cell("cbased-40", "40%", "params/cifar10-cbased-40.yaml", (), 92.47, 0.41),
    )),
    "table3": Table("table3", "Table 3: CIFAR-10N / CIFAR-100N (Wei et al., 2022)", (
        Cell("c10n-random1", "CIFAR-10N Random1", "params/cifar10n-random.yaml", ("cifar_n=random1",), 95.21, 0.05, 0.1723),
        Cell("c10n-random2", "CIFAR-10N Random2", "params/cifar10n-random.yaml", ("cifar_n=random2",), 95.31, 0.10, 0.1812),
        Cell("c10n-random3", "CIFAR-10N Random3", "params/cifar10n-random.yaml", ("cifar_n=random3",), 95.25, 0.17, 0.1764),
        Cell("c10n-worst", "CIFAR-10N Worst", "params/cifar10n-worst.yaml", (), 93.52, 0.49, 0.4021),
        Cell("c100n-noisy", "CIFAR-100N Noisy", "params/cifar100n-noisy.yaml", (), 70.79, 0.06, 0.402),
    ), note="CIFAR-10N Random1/2/3 are 17.2/18.1/17.6% noisy, Worst 40.2%, CIFAR-100N Noisy 40.2%."),
    "table4": Table("table4", "Table 4: Clothing1M", (
        Cell("clothing1m", "Clothing1M", "params/clothing1m.yaml", (), 74.62, 0.14, quick_noise_rate=0.385),
    ), note="Clothing1M is not redistributable: export it as an image folder with CSVs (see the params file). "
            "Its label noise is estimated at 38.5%; quick scale uses that rate."),
    "table5": Table("table5", "Table 5: ablation on CIFAR-10 with 40% classification-based noise", (
        Cell("gmm", "GMM selection (no easy, no hard)", "params/cifar10-cbased-40.yaml", ("variant=gmm",), 86.24, 0.90),
        Cell("easy", "+ easy selection (Eq. 1)", "params/cifar10-cbased-40.yaml", ("variant=easy",), 89.77, 1.45),
        Cell("hallnll", "+ hard sample correction (full)", "params/cifar10-cbased-40.yaml", ("variant=hallnll",),
             92.47, 0.41),
    )),
    "table7": Table("table7", "Table 7: P% of easy selection (C-based 40%, lambda_conf = 0.8)", (
        Cell("p-0.3", "P = 0.3", "params/cifar10-cbased-40.yaml", ("p=0.3", "lambda_conf=0.8"), 90.38, 0.51),
        Cell("p-0.4", "P = 0.4", "params/cifar10-cbased-40.yaml", ("p=0.4", "lambda_conf=0.8"), 92.47, 0.41),
        Cell("p-0.5", "P = 0.5", "params/cifar10-cbased-40.yaml", ("p=0.5", "lambda_conf=0.8"), 92.38, 0.14),
    )),
    "table8": Table("table8", "Table 8: lambda_conf of hard selection (C-based 40%, P = 0.4)", (
        Cell("lc-0.7", "lambda_conf = 0.7", "params/cifar10-cbased-40.yaml", ("lambda_conf=0.7", "p=0.4"), 91.12, 0.76),
        Cell("lc-0.8", "lambda_conf = 0.8", "params/cifar10-cbased-40.yaml", ("lambda_conf=0.8", "p=0.4"), 92.47, 0.41),
        Cell("lc-0.9", "lambda_conf = 0.9", "params/cifar10-cbased-40.yaml", ("lambda_conf=0.9", "p=0.4"), 91.53, 1.18),
    )),
}


def get_table(name: str) -> Table:
    if name not in TABLES:
        raise ReproduceError(f"unknown table {name!r}; known tables: {', '.join(TABLES)} (or 'all'); "
                             f"see `hallnll reproduce --list`")
    return TABLES[name]


def _table_names(name: str | Sequence[str]) -> list:
    if isinstance(name, str):
        names = list(TABLES) if name == "all" else [n.strip() for n in name.split(",") if n.strip()]
    else:
        names = list(name)
    if not names:
        raise ReproduceError(f"no table given; known tables: {', '.join(TABLES)} (or 'all')")
    for n in names:
        get_table(n)
    return names


# ------------------------------------------------------------------ planning
def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@dataclass
class CellPlan:
    """How a cell runs at a scale: the params file and overrides given to the notebook."""

    table: str
    cell: Cell
    scale: str
    params: str
    overrides: list
    note: str = ""
    error: str = ""  # a configuration error: the cell cannot run
    config: dict = field(default_factory=dict)
    run_root: Optional[Path] = None  # RUNS/SCALE/NAME-HASH (seed folders below)


def _abs(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO / p


def cell_settings(cell: Cell, scale: str, extra: Sequence[str] = ()):
    """``(params, overrides, note)`` of a cell at a scale; ``extra`` (``--set``) goes last.

    Raises :class:`ConfigError` when the cell's own settings are invalid.
    """
    if scale == "paper":
        return cell.params, list(cell.overrides) + list(extra), ""
    if scale != "quick":
        raise ReproduceError(f"unknown scale {scale!r}; use quick or paper")
    src = load_config(_abs(cell.params), list(cell.overrides))
    method = [f"{k}={_fmt_value(getattr(src, k))}" for k in METHOD_KEYS]
    if src.noise in DIGITS_NOISE:
        kind, rate = src.noise, src.noise_rate
        note = "" if src.noise == "classification" else f"{src.noise} noise regenerated on digits"
    else:
        kind = "classification"
        rate = cell.quick_noise_rate if cell.quick_noise_rate is not None else src.noise_rate
        what = {"file": "the published C-based labels", "cifar-n": "CIFAR-N human labels",
                "none": f"{src.dataset} labels"}.get(src.noise, src.noise)
        if src.dataset == "folder":
            what = "Clothing1M's labels"
        note = f"{what} exist only for their dataset: digits with {100 * rate:.1f}% classification-based noise instead"
    noise = [f"noise={kind}", f"noise_rate={_fmt_value(rate)}"]
    return QUICK_PARAMS, method + noise + list(QUICK_SCHEDULE) + list(extra), note


def _config_hash(cfg_dict: dict) -> str:
    d = {k: v for k, v in cfg_dict.items() if k not in ("seed", "name", "progress")}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


def plan_table(name: str, scale: str = "quick", runs="runs/reproduce", extra: Sequence[str] = ()) -> list:
    """A :class:`CellPlan` per cell of table ``name``."""
    table = get_table(name)
    out = []
    for cell in table.cells:
        try:
            params, overrides, note = cell_settings(cell, scale, extra)
            cfg = load_config(_abs(params), overrides)
        except ConfigError as e:
            out.append(CellPlan(name, cell, scale, cell.params, list(cell.overrides) + list(extra), error=str(e)))
            continue
        d = cfg.to_dict()
        stem = Path(cell.params).stem
        root = Path(runs) / scale / f"{stem}-{_config_hash(d)}"
        out.append(CellPlan(name, cell, scale, params, overrides, note, "", d, root))
    return out


def _needs(cfg: dict) -> list:
    """Data files a configuration reads (path, present?)."""
    need = []
    root = Path(cfg.get("data_root", "")).expanduser()
    if cfg["dataset"] == "cifar10":
        need.append(str(root / "cifar-10-batches-py") + "/")
    elif cfg["dataset"] == "cifar100":
        need.append(str(root / "cifar-100-python") + "/")
    elif cfg["dataset"] == "folder":
        need += [cfg["folder_train_csv"]] + ([cfg["folder_test_csv"]] if cfg["folder_test_csv"] else [])
    if cfg["noise"] == "file":
        need.append(cfg["noise_file"])
    if cfg["noise"] == "cifar-n":
        need.append(cfg["cifar_n_file"])
    if cfg.get("pretrained"):
        need.append(cfg["pretrained"])
    return [(p, _abs(p.rstrip("/")).exists()) for p in need]


def list_tables(names: Sequence[str] | None = None, scale: str = "quick", extra: Sequence[str] = ()) -> str:
    """What ``--list`` prints: every table, its cells, the paper's numbers and what each cell needs."""
    lines = []
    for name in names or list(TABLES):
        t = get_table(name)
        lines.append(f"{name}: {t.title}")
        if t.note:
            lines.append(f"  note: {t.note}")
        for cell in t.cells:
            paper = f"{cell.paper_mean:.2f} ± {cell.paper_std:.2f}" if cell.paper_mean is not None else "-"
            lines.append(f"  {cell.key:<13} {cell.label:<34} paper {paper}")
            ov = " ".join(f"--set {o}" for o in cell.overrides)
            lines.append(f"      paper scale: {cell.params}{(' ' + ov) if ov else ''}")
            try:
                cfg = load_config(_abs(cell.params), list(cell.overrides)).to_dict()
                needs = _needs(cfg)
                lines.append(f"        {cfg['dataset']}, {cfg['arch']}, {cfg['epochs']} epochs ({cfg['warmup_epochs']} warm-up), "
                             f"{cfg['noise']} noise, variant {cfg['variant']}, P {cfg['p']}, lambda_conf {cfg['lambda_conf']}, "
                             f"lambda_mse {cfg['lambda_mse']}")
                lines.append("        needs: " + (", ".join(f"{p} [{'present' if ok else 'missing'}]" for p, ok in needs)
                                                  if needs else "nothing beyond the package"))
            except ConfigError as e:
                lines.append(f"        config error: {e}")
            try:
                params, overrides, note = cell_settings(cell, "quick", extra)
                q = load_config(_abs(params), overrides).to_dict()
                lines.append(f"      quick scale: digits, {q['arch']}, {q['epochs']} epochs ({q['warmup_epochs']} warm-up), "
                             f"{q['noise']} noise {100 * q['noise_rate']:.1f}%" + (f" [{note}]" if note else ""))
            except ConfigError as e:
                lines.append(f"      quick scale: config error: {e}")
        lines.append("")
    lines.append("Data files are read from the paths the params files name (.data/ is git-ignored; the comments in "
                 "params/*.yaml say where each file comes from).")
    lines.append("run: hallnll reproduce TABLE|all [--scale quick|paper] [--seeds N] [--parallel N] [--set key=value]")
    return "\n".join(lines)


# ------------------------------------------------------------------ running
@dataclass
class Job:
    label: str  # "table5/gmm seed0" (first cell that asked for it)
    params: str
    overrides: list
    seed: int
    out_dir: Path
    threads: int = 0

    @property
    def notebook(self) -> Path:
        return self.out_dir / "06_training.ipynb"


def _done(out_dir: Path) -> bool:
    return (Path(out_dir) / "summary.json").is_file()


def _notebook_error(path: Path) -> str:
    """The error an executed notebook shows (ename: evalue), or ''."""
    try:
        import nbformat

        nb = nbformat.read(str(path), as_version=4)
    except Exception:
        return ""
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                return f"{o.get('ename')}: {o.get('evalue')}"
    return ""


def kernel_name() -> str:
    """A Jupyter kernel that runs this very interpreter (so it imports hallnll and torch).

    ``python3`` when its kernelspec launches this interpreter (ipykernel's own
    spec, installed or not, does); otherwise a kernelspec ``hallnll-python``
    for ``sys.executable`` is written to a temporary folder that is put on
    ``JUPYTER_PATH`` for this process and its children (nothing in the
    user's Jupyter folders is touched).
    """
    import tempfile

    try:
        import ipykernel  # noqa: F401
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError as e:
        raise ReproduceError(f"running notebooks needs papermill and ipykernel ({e}); "
                             f"pip install -e .[notebooks]") from None
    same = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    try:
        argv = KernelSpecManager().get_kernel_spec(KERNEL_NAME).argv
        if argv and (argv[0] in same or os.path.realpath(argv[0]) == os.path.realpath(sys.executable)):
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    base = Path(tempfile.gettempdir()) / f"hallnll-jupyter-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    spec_dir = base / "kernels" / OWN_KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python (hallnll)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    paths = os.environ.get("JUPYTER_PATH", "")
    if str(base) not in paths.split(os.pathsep):
        os.environ["JUPYTER_PATH"] = str(base) + (os.pathsep + paths if paths else "")
    return OWN_KERNEL_NAME


def _check_tools() -> str:
    try:
        import papermill  # noqa: F401
    except ImportError as e:
        raise ReproduceError(f"running notebooks needs papermill ({e}); pip install -e .[notebooks]") from None
    return kernel_name()


def execute_job(job: Job) -> dict:
    """Run one job's notebook (in this process; the kernel is a child process).

    Returns ``{"ok", "summary" | "error", "notebook", "out_dir", "seconds"}``.
    """
    import papermill as pm

    t0 = time.perf_counter()
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if job.threads:
        os.environ["OMP_NUM_THREADS"] = str(job.threads)
        os.environ["MKL_NUM_THREADS"] = str(job.threads)
    env_pp = os.environ.get("PYTHONPATH", "")
    if str(REPO) not in env_pp.split(os.pathsep):
        os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + env_pp if env_pp else "")
    params = dict(params=str(_abs(job.params)), overrides=list(job.overrides) + ["progress=false"],
                  out_dir=str(out.resolve()), seed=int(job.seed), threads=int(job.threads), plots=True)
    res = {"label": job.label, "notebook": str(job.notebook), "out_dir": str(out)}
    try:
        pm.execute_notebook(str(NOTEBOOK), str(job.notebook), parameters=params, kernel_name=kernel_name(),
                            cwd=str(REPO), progress_bar=False, log_output=False)
    except Exception as e:  # PapermillExecutionError, a dead kernel, ...
        msg = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', str(e))}"
        if not getattr(e, "ename", None):
            msg = _notebook_error(job.notebook) or msg
        res.update(ok=False, error=msg.strip().splitlines()[-1][:500] if msg.strip() else type(e).__name__,
                   seconds=time.perf_counter() - t0)
        return res
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        res.update(ok=False, error=f"the notebook finished but wrote no {summary_path}", seconds=time.perf_counter() - t0)
        return res
    res.update(ok=True, summary=json.loads(summary_path.read_text()), seconds=time.perf_counter() - t0)
    return res


def _spawn_pool(workers: int):
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def run_jobs(jobs: list, parallel: int = 1, log=print) -> list:
    """Run the jobs whose ``summary.json`` is missing, ``parallel`` notebooks at a time.

    Returns one result dict per job (``skipped`` for finished runs).
    """
    results = [None] * len(jobs)
    todo = []
    for i, job in enumerate(jobs):
        if _done(job.out_dir):
            results[i] = {"label": job.label, "ok": True, "skipped": True, "out_dir": str(job.out_dir),
                          "notebook": str(job.notebook), "summary": json.loads((job.out_dir / "summary.json").read_text())}
            log(f"  skip  {job.label}: finished ({job.out_dir})")
        else:
            todo.append(i)
    if not todo:
        return results
    parallel = max(1, int(parallel))
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else 0
    for i in todo:
        jobs[i].threads = jobs[i].threads or threads
    n = len(todo)

    def report(k, i, r):
        results[i] = r
        if r["ok"]:
            acc = r["summary"].get("best_acc")
            log(f"  [{k}/{n}] done  {jobs[i].label}: best {100 * acc:.2f}% ({r['seconds']:.0f} s)")
        else:
            log(f"  [{k}/{n}] FAILED {jobs[i].label}: {r['error']}\n           notebook: {r['notebook']}")

    if parallel == 1:
        for k, i in enumerate(todo, 1):
            log(f"  [{k}/{n}] run   {jobs[i].label} -> {jobs[i].out_dir}")
            report(k, i, execute_job(jobs[i]))
        return results
    with _spawn_pool(min(parallel, n)) as pool:
        futs = {}
        for i in todo:
            log(f"  queue {jobs[i].label} -> {jobs[i].out_dir}")
            futs[pool.submit(execute_job, jobs[i])] = i
        for k, fut in enumerate(cf.as_completed(futs), 1):
            i = futs[fut]
            try:
                r = fut.result()
            except Exception as e:  # the worker itself died
                r = {"label": jobs[i].label, "ok": False, "error": f"{type(e).__name__}: {e}",
                     "notebook": str(jobs[i].notebook), "out_dir": str(jobs[i].out_dir), "seconds": 0.0}
            report(k, i, r)
    return results


# ------------------------------------------------------------------ results
def _mean_std(values: list):
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def collect(plans: list, seeds: Sequence[int], failures: dict | None = None) -> list:
    """One row per cell: our mean/std of best accuracy (%) over the finished seeds, the paper's number."""
    rows = []
    failures = failures or {}
    for p in plans:
        accs, used, failed = [], [], []
        if p.run_root is not None:
            for s in seeds:
                f = p.run_root / f"seed{s}" / "summary.json"
                if f.is_file():
                    acc = json.loads(f.read_text()).get("best_acc")
                    if acc is not None:
                        accs.append(100.0 * acc)
                        used.append(s)
                        continue
                failed.append(s)
        m, sd = _mean_std(accs)
        diff = (m - p.cell.paper_mean) if (m is not None and p.cell.paper_mean is not None) else None
        errs = [failures[(str(p.run_root), s)] for s in failed if (str(p.run_root), s) in failures]
        rows.append({
            "table": p.table, "cell": p.cell.key, "label": p.cell.label, "scale": p.scale,
            "ours_mean": m, "ours_std": sd, "n_seeds": len(accs), "seeds": " ".join(map(str, used)),
            "paper_mean": p.cell.paper_mean, "paper_std": p.cell.paper_std, "diff": diff,
            "params": p.params, "overrides": " ".join(p.overrides), "runs": str(p.run_root) if p.run_root else "",
            "note": p.note, "error": p.error or ("; ".join(errs) if errs else ""),
        })
    return rows


CSV_COLUMNS = ("table", "cell", "label", "scale", "ours_mean", "ours_std", "n_seeds", "seeds", "paper_mean",
               "paper_std", "diff", "params", "overrides", "runs", "note", "error")


def _pm(m, s) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    return f"{m:.2f} ± {s:.2f}" if s is not None and not (isinstance(s, float) and math.isnan(s)) else f"{m:.2f}"


def format_markdown(name: str, rows: list, scale: str) -> str:
    t = get_table(name)
    out = [f"## {t.title}", ""]
    if scale == "quick":
        out += [f"Scale **quick**: digits (8x8, 1,347 training images), small CNN, "
                f"{', '.join(QUICK_SCHEDULE)}; the paper's numbers are CIFAR / ResNet-34 and only for orientation.", ""]
    else:
        out += ["Scale **paper**: the params files as they are (Table 6).", ""]
    out += ["| cell | ours: best acc. % (mean ± std) | seeds | paper | ours − paper |",
            "|---|---|---|---|---|"]
    notes = []
    same_note = len(rows) > 1 and len({r["note"] for r in rows}) == 1 and rows[0]["note"]
    if same_note:
        notes.append(f"All cells: {rows[0]['note']}.")
    for r in rows:
        diff = "-" if r["diff"] is None else f"{r['diff']:+.2f}"
        label = r["label"]
        if r["note"] and not same_note:
            notes.append(f"{label}: {r['note']}.")
        if r["error"]:
            notes.append(f"{label}: failed: {r['error']}")
        out.append(f"| {label} | {_pm(r['ours_mean'], r['ours_std'])} | {r['n_seeds']} | "
                   f"{_pm(r['paper_mean'], r['paper_std'])} | {diff} |")
    if t.note:
        notes.append(t.note)
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def write_results(name: str, rows: list, results_dir, scale: str):
    """Write ``RESULTS/NAME.md`` and ``RESULTS/NAME.csv``; returns both paths and the markdown."""
    from .reporting import atomic_write_text

    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    md = format_markdown(name, rows, scale)
    atomic_write_text(d / f"{name}.md", md)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]))
                    for k in CSV_COLUMNS})
    atomic_write_text(d / f"{name}.csv", buf.getvalue())
    return d / f"{name}.md", d / f"{name}.csv", md


def read_results(name: str, results_dir="results"):
    """``RESULTS/NAME.csv`` as a pandas DataFrame (None when it does not exist)."""
    import pandas as pd

    p = Path(results_dir) / f"{name}.csv"
    if not p.is_file():
        return None
    return pd.read_csv(p, keep_default_na=True)


def paper_rows(name: str) -> list:
    """The paper's numbers of a table as rows (cell, label, paper_mean, paper_std)."""
    return [{"table": name, "cell": c.key, "label": c.label, "paper_mean": c.paper_mean, "paper_std": c.paper_std}
            for c in get_table(name).cells]


def compare(name: str, results_dir="results"):
    """The paper's cells of ``name`` joined with our results (NaN where not run): a DataFrame."""
    import pandas as pd

    paper = pd.DataFrame(paper_rows(name))
    ours = read_results(name, results_dir)
    if ours is None:
        for c in ("ours_mean", "ours_std", "n_seeds", "diff", "scale", "note"):
            paper[c] = float("nan") if c not in ("scale", "note") else ""
        return paper
    keep = [c for c in ("cell", "ours_mean", "ours_std", "n_seeds", "diff", "scale", "note") if c in ours.columns]
    out = paper.merge(ours[keep], on="cell", how="left")
    for c in ("scale", "note"):
        if c in out.columns:
            out[c] = out[c].fillna("")
    return out


# ------------------------------------------------------------------ entry points
def reproduce(table: str | Sequence[str], scale: str = "quick", seeds: int | None = None, parallel: int = 1,
              runs="runs/reproduce", results="results", overrides: Sequence[str] = (), log=print) -> dict:
    """Run (or reuse) every cell x seed of the tables and write their results.

    Returns ``{"tables": {name: rows}, "failed": [result dicts], "markdown": {name: text}}``.
    """
    names = _table_names(table)
    if scale not in ("quick", "paper"):
        raise ReproduceError(f"unknown scale {scale!r}; use quick or paper")
    n_seeds = seeds if seeds is not None else (3 if scale == "paper" else 1)
    if n_seeds < 1:
        raise ReproduceError(f"--seeds {n_seeds}: give at least 1")
    seed_list = list(range(n_seeds))
    plans = {n: plan_table(n, scale, runs, overrides) for n in names}
    jobs, by_dir = [], {}
    for n in names:
        for p in plans[n]:
            if p.error:
                log(f"  cannot run {n}/{p.cell.key}: {p.error}")
                continue
            for s in seed_list:
                out = p.run_root / f"seed{s}"
                if str(out) in by_dir:
                    continue
                by_dir[str(out)] = len(jobs)
                jobs.append(Job(f"{n}/{p.cell.key} seed{s}", p.params, list(p.overrides), s, out))
    log(f"reproduce {', '.join(names)} at scale {scale}: {len(jobs)} runs ({n_seeds} seed(s) each), "
        f"{parallel} at a time, runs under {Path(runs) / scale}")
    if any(not _done(j.out_dir) for j in jobs):
        _check_tools()
    res = run_jobs(jobs, parallel, log) if jobs else []
    failures = {}
    for job, r in zip(jobs, res):
        if r and not r["ok"]:
            failures[(str(job.out_dir.parent), job.seed)] = f"seed{job.seed}: {r['error']} (notebook {r['notebook']})"
    out = {"tables": {}, "failed": [r for r in res if r and not r["ok"]], "markdown": {}}
    for n in names:
        rows = collect(plans[n], seed_list, failures)
        md_path, csv_path, md = write_results(n, rows, results, scale)
        out["tables"][n] = rows
        out["markdown"][n] = md
        log("")
        log(md)
        log(f"wrote {md_path} and {csv_path}")
    bad = [p for n in names for p in plans[n] if p.error]
    if out["failed"] or bad:
        log(f"\n{len(out['failed'])} run(s) failed" + (f", {len(bad)} cell(s) could not start" if bad else "") + ":")
        for r in out["failed"]:
            log(f"  {r['label']}: {r['error']}\n    executed notebook: {r['notebook']}")
        for p in bad:
            log(f"  {p.table}/{p.cell.key}: {p.error}")
    return out


def main(args) -> int:
    """``hallnll reproduce`` (see :mod:`hallnll.cli`): 0 when every run finished, 1 when some
    failed (the results of the others are still written), 2 on bad input."""
    table = getattr(args, "table", None)
    scale = getattr(args, "scale", "quick") or "quick"
    extra = list(getattr(args, "set", None) or [])
    try:
        if getattr(args, "list", False):
            names = _table_names(table) if table else None
            print(list_tables(names, scale, extra))
            return 0
        if not table:
            raise ReproduceError(f"give a table: {', '.join(TABLES)} or all (see --list)")
        out = reproduce(table, scale, getattr(args, "seeds", None), getattr(args, "parallel", 1) or 1,
                        getattr(args, "runs", "runs/reproduce"), getattr(args, "results", "results"), extra)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bad = out["failed"] or any(r["error"] for rows in out["tables"].values() for r in rows)
    return 1 if bad else 0


# ------------------------------------------------------------------ hallnll train --seeds/--parallel
def _fit_one(params, overrides, out_dir, resume, noisy, threads, data=None) -> dict:
    """One seed of :func:`run_seeds` (in a worker process or in this one)."""
    t0 = time.perf_counter()
    try:
        import torch

        if threads:
            torch.set_num_threads(threads)
        from .train import fit

        cfg = load_config(params, overrides)
        out = Path(out_dir)
        if resume and _finished(out, cfg):
            s = json.loads((out / "summary.json").read_text())
            s["skipped"] = True
            return s
        noisy_t = torch.as_tensor(noisy, dtype=torch.int64) if noisy is not None else None
        res = fit(cfg, out, data=data, noisy=noisy_t, resume=resume, progress=False if threads else None)
        return res.summary
    except Exception as e:
        seed = next((o.split("=", 1)[1] for o in reversed(list(overrides)) if o.startswith("seed=")), None)
        return {"seed": int(seed) if seed is not None else None, "error": f"{type(e).__name__}: {e}",
                "out_dir": str(out_dir), "wall_seconds": time.perf_counter() - t0}


def _finished(out: Path, cfg) -> bool:
    """``summary.json`` exists and ``config.yaml`` holds the same settings (progress aside)."""
    import yaml

    if not (out / "summary.json").is_file() or not (out / "config.yaml").is_file():
        return False
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
    except Exception:
        return False
    want = cfg.to_dict()
    return {k: v for k, v in saved.items() if k != "progress"} == {k: v for k, v in want.items() if k != "progress"}


def run_seeds(params, overrides, out, seeds: int = 3, parallel: int = 1, resume: bool = True) -> list:
    """``hallnll train --seeds N --parallel M``: seeds cfg.seed .. cfg.seed+N-1 into ``OUT/seed<k>``.

    The data and the noisy labels are made once (they do not depend on the
    seed; classification-based noise trains a CNN) and shared by all seeds.
    ``parallel > 1`` runs that many seeds at once in worker processes, each
    with ``cpu_count // parallel`` torch threads. A finished seed
    (``summary.json`` beside a ``config.yaml`` with the same settings) is not
    redone when ``resume``; one with other settings resumes from its checkpoint. Returns one summary dict
    per seed; a failed seed gives ``{"seed", "error", "out_dir"}`` and the
    others go on. Configuration errors raise before anything runs.
    """
    from .reporting import atomic_write_text
    from .train import prepare

    overrides = list(overrides or [])
    cfg = load_config(params, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_values = [cfg.seed + k for k in range(max(1, int(seeds)))]
    jobs = [(list(overrides) + [f"seed={s}"], out / f"seed{s}") for s in seed_values]
    need = [j for j in jobs if not (resume and _finished(j[1], load_config(params, j[0])))]
    data = noisy = None
    if need:
        data, noisy, rep = prepare(cfg)
        atomic_write_text(out / "noise_report.txt", str(rep) + "\n")
    parallel = max(1, int(parallel))
    if parallel == 1 or len(need) <= 1:
        summaries = [_fit_one(params, ov, d, resume, noisy, 0, data) for ov, d in jobs]
    else:
        threads = max(1, (os.cpu_count() or 1) // parallel)
        noisy_list = noisy.tolist() if noisy is not None else None
        summaries = [None] * len(jobs)
        with _spawn_pool(min(parallel, len(jobs))) as pool:
            futs = {pool.submit(_fit_one, str(params), ov, str(d), resume, noisy_list, threads): i
                    for i, (ov, d) in enumerate(jobs)}
            for fut in cf.as_completed(futs):
                i = futs[fut]
                try:
                    summaries[i] = fut.result()
                except Exception as e:  # the worker process died
                    summaries[i] = {"seed": seed_values[i], "error": f"{type(e).__name__}: {e}",
                                    "out_dir": str(jobs[i][1])}
    for s in summaries:
        if s.get("error"):
            print(f"seed {s.get('seed')} failed: {s['error']} ({s.get('out_dir')})", file=sys.stderr)
    return summaries
