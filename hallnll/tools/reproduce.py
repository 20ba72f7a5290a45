"""Reproduce the paper's tables: every cell x seed of a table (:mod:`hallnll.tools.tables`)
is one run of ``06_training.ipynb``, executed by :mod:`hallnll.tools.jobs`.

    hallnll reproduce --list                       # every table, its cells and what each needs
    hallnll reproduce table5                       # quick scale: digits on the CPU, minutes
    hallnll reproduce table2 --scale paper --seeds 3 --parallel 2
    hallnll reproduce all --scale quick
    hallnll reproduce table5 --cells gmm,hallnll    # only these cells run; the table keeps the others' runs

(The notebooks need the extras: ``pip install -e ".[notebooks]"``.)

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
    the result tables say so. Quick numbers are digits numbers: the tables
    name digits in their heading and show the paper's CIFAR numbers for
    orientation only, with no difference taken.

Runs
    Every (cell, seed) is one :class:`hallnll.tools.jobs.Job` through the notebook
    ``06_training`` (parameters ``params``, ``overrides``, ``out_dir``,
    ``seed``, ``threads``), run in the working folder; the notebook's
    :func:`hallnll.train.fit` writes ``summary.json`` (and metrics.jsonl,
    labels.csv, config.yaml, checkpoint.pt) into the run folder, and the
    executed notebook is kept beside them as ``06_training.ipynb``. Run
    folders are ``RUNS/SCALE/PARAMS-HASH/seedK``, the hash taken over the
    whole resolved configuration (seed and name aside), so cells of
    different tables with the same settings (Table 5 "hallnll", Table 7
    P=0.4, Table 8 lambda_conf=0.8, Table 2 40%) share their runs. A run is
    not redone when it is finished (:func:`hallnll.tools.jobs.finished`). A failed
    run is reported with its executed notebook and the error; the others go on.
    ``--cells NAME,...`` runs only those cells (names as ``--list`` gives them); the
    tables are still written whole, each other cell from the runs it already has
    ("-" where it has none).

Results
    ``RESULTS/TABLE.md`` and ``RESULTS/TABLE.csv``: per cell our mean ± std
    of the best test accuracy (%) over the finished seeds (std with ddof=1;
    none for one seed), the number of seeds, the paper's number and, at paper
    scale, the difference (ours - paper, percentage points). Where runs
    failed and a table is already there, it is kept and this run's table
    (from what succeeded, each failure with its executed notebook) is
    ``TABLE.partial.md`` / ``.csv`` beside it; a later complete run writes
    ``TABLE.md`` and removes the partial one.

Input
    The output folders (``--results``, ``--runs``) and every cell's settings
    (``--set`` included) are checked before any cell runs: one
    :class:`ConfigError` (``error:`` line, exit 2), nothing written.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..config import ConfigError, load_config
from .jobs import Job, config_hash, finished, run_jobs
from .notebook import require as require_notebook_tools
from .tables import TABLES, Cell, ReproduceError, get_table, paper_rows, table_names

NOTEBOOK = "06_training"
QUICK_PARAMS = "params/digits-quick.yaml"
#: the short schedule of ``--scale quick`` (15 epochs, 5 of warm-up, lr / 10 at 12)
QUICK_SCHEDULE = ("epochs=15", "warmup_epochs=5", "lr_decay_epoch=12")
#: what quick-scale results are, in their heading
QUICK_DATA = "digits (1,347 8x8 training images, 450 test), small CNN"
#: settings of a cell that ``--scale quick`` keeps (the method's, not the data's)
METHOD_KEYS = ("variant", "nets", "p", "lambda_conf", "lambda_mse", "lambda_p", "k", "easy_selection", "gmm_threshold")
#: noise kinds that can be made on digits
DIGITS_NOISE = ("ptd", "classification", "symmetric", "asymmetric", "none")

__all__ = ["TABLES", "Cell", "ReproduceError", "get_table", "paper_rows", "plan_table", "list_tables",
           "reproduce", "collect", "write_results", "read_results", "compare", "main"]


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


def cell_settings(cell: Cell, scale: str, extra: Sequence[str] = ()):
    """``(params, overrides, note)`` of a cell at a scale; ``extra`` (``--set``) goes last.

    Raises :class:`ConfigError` when the cell's own settings are invalid.
    """
    if scale == "paper":
        return cell.params, list(cell.overrides) + list(extra), ""
    if scale != "quick":
        raise ReproduceError(f"unknown scale {scale!r}; use quick or paper")
    src = load_config(cell.params, list(cell.overrides))
    method = [f"{k}={_fmt_value(getattr(src, k))}" for k in METHOD_KEYS]
    if src.noise in DIGITS_NOISE:
        kind, rate = src.noise, src.noise_rate
        note = "" if src.noise == "classification" else f"{src.noise} noise regenerated on digits"
    else:
        kind = "classification"
        rate = cell.quick_noise_rate if cell.quick_noise_rate is not None else src.noise_rate
        what = {"file": "the published C-based labels", "cifar-n": "CIFAR-N human labels",
                "none": f"{src.dataset} labels"}.get(src.noise, src.noise)
        if src.dataset in ("folder", "clothing1m"):
            what = "Clothing1M's labels"
        note = f"{what} exist only for their dataset: digits with {100 * rate:.1f}% classification-based noise instead"
    noise = [f"noise={kind}", f"noise_rate={_fmt_value(rate)}"]
    return QUICK_PARAMS, method + noise + list(QUICK_SCHEDULE) + list(extra), note


def plan_table(name: str, scale: str = "quick", runs="runs/reproduce", extra: Sequence[str] = ()) -> list:
    """A :class:`CellPlan` per cell of table ``name``."""
    table = get_table(name)
    out = []
    for cell in table.cells:
        try:
            params, overrides, note = cell_settings(cell, scale, extra)
            cfg = load_config(params, overrides)
        except ConfigError as e:
            out.append(CellPlan(name, cell, scale, cell.params, list(cell.overrides) + list(extra), error=str(e)))
            continue
        d = cfg.to_dict()
        stem = Path(cell.params).stem
        root = Path(runs) / scale / f"{stem}-{config_hash(d, ignore=('seed', 'name', 'progress'))}"
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
    return [(p, Path(p.rstrip("/")).expanduser().exists()) for p in need]


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
            lines.append(f"  {cell.key:<13} {cell.name:<34} paper {paper}")
            ov = " ".join(f"--set {o}" for o in cell.overrides)
            lines.append(f"      paper scale: {cell.params}{(' ' + ov) if ov else ''}")
            try:
                cfg = load_config(cell.params, list(cell.overrides)).to_dict()
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
                q = load_config(params, overrides).to_dict()
                lines.append(f"      quick scale: digits, {q['arch']}, {q['epochs']} epochs ({q['warmup_epochs']} warm-up), "
                             f"{q['noise']} noise {100 * q['noise_rate']:.1f}%" + (f" [{note}]" if note else ""))
            except ConfigError as e:
                lines.append(f"      quick scale: config error: {e}")
        lines.append("")
    lines.append("Data files are read from the paths the params files name (.data/ is git-ignored; the comments in "
                 "params/*.yaml say where each file comes from).")
    lines.append("run: hallnll reproduce TABLE|all [--scale quick|paper] [--seeds N] [--parallel N] [--set key=value]")
    return "\n".join(lines)


# ------------------------------------------------------------------ results
def _mean_std(values: list):
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None  # one seed has no spread
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def collect(plans: list, seeds: Sequence[int], failures: dict | None = None) -> list:
    """One row per cell: our mean/std of best accuracy (%) over the finished seeds, the paper's number.

    Where the run had a validation split (Clothing1M), the accuracy is the test
    accuracy at the best-validation epoch (``test_acc_at_best_val``): App. A, "we use
    the 14K clean validation set to choose the best model, which is applied to the
    10K clean test", the quantity of Table 4."""
    rows = []
    failures = failures or {}
    for p in plans:
        accs, used, failed = [], [], []
        if p.run_root is not None:
            for s in seeds:
                f = p.run_root / f"seed{s}" / "summary.json"
                if f.is_file():
                    summary = json.loads(f.read_text())
                    acc = summary.get("test_acc_at_best_val", summary.get("best_acc"))
                    if acc is not None:
                        accs.append(100.0 * acc)
                        used.append(s)
                        continue
                failed.append(s)
        m, sd = _mean_std(accs)
        # a difference only where ours and the paper's ran on the same data
        comparable = p.scale == "paper" and m is not None and p.cell.paper_mean is not None
        diff = m - p.cell.paper_mean if comparable else None
        errs = [failures[(str(p.run_root), s)] for s in failed if (str(p.run_root), s) in failures]
        rows.append({
            "table": p.table, "cell": p.cell.key, "label": p.cell.name, "method": p.cell.method, "scale": p.scale,
            "ours_mean": m, "ours_std": sd, "n_seeds": len(accs), "seeds": " ".join(map(str, used)),
            "paper_mean": p.cell.paper_mean, "paper_std": p.cell.paper_std, "diff": diff,
            "params": p.params, "overrides": " ".join(p.overrides), "runs": str(p.run_root) if p.run_root else "",
            "note": p.note, "error": p.error or ("; ".join(errs) if errs else ""),
        })
    return rows


CSV_COLUMNS = ("table", "cell", "label", "scale", "ours_mean", "ours_std", "n_seeds", "seeds", "paper_mean",
               "paper_std", "diff", "params", "overrides", "runs", "note", "error", "method")


def _pm(m, s) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    return f"{m:.2f} ± {s:.2f}" if s is not None and not (isinstance(s, float) and math.isnan(s)) else f"{m:.2f}"


def format_markdown(name: str, rows: list, scale: str) -> str:
    """The table as markdown. At quick scale the heading names the data it ran on
    and the paper's (CIFAR) numbers stand beside ours without a difference."""
    t = get_table(name)
    quick = scale == "quick"
    if quick:
        out = [f"## {t.number} at quick scale, on {QUICK_DATA}", "",
               f"The cells of the paper's {t.title[len(t.number) + 2:]}, with their method settings, run on digits "
               f"({', '.join(QUICK_SCHEDULE)}). These are digits numbers: the paper's column (CIFAR / ResNet-34) "
               f"is there for orientation, not for comparison.", "",
               "| cell | ours on digits: best acc. % | seeds | paper (CIFAR, not comparable) |",
               "|---|---|---|---|"]
    else:
        out = [f"## {t.title}", "", "Scale **paper**: the params files as they are (Table 6).", "",
               "| cell | ours: best acc. % | seeds | paper | ours − paper |", "|---|---|---|---|---|"]
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
                   f"{_pm(r['paper_mean'], r['paper_std'])} |" + ("" if quick else f" {diff} |"))
    if t.note:
        notes.append(t.note)
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def write_results(name: str, rows: list, results_dir, scale: str, suffix: str = ""):
    """Write ``RESULTS/NAME{suffix}.md`` and ``.csv``; returns both paths and the markdown."""
    from ..reporting import atomic_write_text

    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    md = format_markdown(name, rows, scale)
    name = name + suffix
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
              runs="runs/reproduce", results="results", overrides: Sequence[str] = (), log=print,
              slurm=None, cells: Sequence[str] | None = None) -> dict:
    """Run (or reuse) every cell x seed of the tables (``cells``: only the cells of these
    names) and write their results.

    Returns ``{"tables": {name: rows}, "failed": [result dicts], "markdown": {name: text}}``;
    ``slurm`` (:class:`hallnll.tools.cluster.SlurmOptions`): the runs as one SLURM job array, ``"pending"``
    lists those left queued (``wait=False``), whose cells the tables leave out until they finish.
    """
    names = table_names(table)
    if scale not in ("quick", "paper"):
        raise ReproduceError(f"unknown scale {scale!r}; use quick or paper")
    n_seeds = seeds if seeds is not None else (3 if scale == "paper" else 1)
    if n_seeds < 1:
        raise ReproduceError(f"--seeds {n_seeds}: give at least 1")
    if int(parallel) < 1:
        raise ReproduceError(f"--parallel {parallel}: give at least 1")
    from ..lock import check_output, folder_lock

    check_output(results, what="--results")
    check_output(runs, what="--runs")
    seed_list = list(range(n_seeds))
    plans = {n: plan_table(n, scale, runs, overrides) for n in names}
    if cells is not None:
        cells = [c.strip() for c in cells if c.strip()]
        known = {p.cell.key for n in names for p in plans[n]}
        unknown = [c for c in cells if c not in known]
        if unknown or not cells:
            raise ReproduceError(f"--cells {','.join(cells)}: {', '.join(names)} has no cell "
                                 f"{', '.join(unknown) or '(none given)'}; its cells: {', '.join(sorted(known))}")
    chosen = lambda p: cells is None or p.cell.key in cells  # noqa: E731
    bad = [p for n in names for p in plans[n] if p.error and chosen(p)]
    if bad:  # the same --set reaches every cell: said once, before any cell runs
        more = f" (and {len(bad) - 1} more cell(s))" if len(bad) > 1 else ""
        raise ConfigError(f"{bad[0].table}/{bad[0].cell.key}: {bad[0].error}{more}; nothing was run")
    jobs, by_dir = [], {}
    for n in names:
        for p in filter(chosen, plans[n]):
            for s in seed_list:
                out = p.run_root / f"seed{s}"
                if str(out) in by_dir:
                    continue
                by_dir[str(out)] = len(jobs)
                jobs.append(Job(f"{n}/{p.cell.key} seed{s}", p.params, list(p.overrides), s, out, NOTEBOOK))
    log(f"reproduce {', '.join(names)}{' cells ' + ','.join(cells) if cells else ''} at scale {scale}: "
        f"{len(jobs)} runs ({n_seeds} seed(s) each), "
        f"{parallel} at a time, runs under {Path(runs) / scale}")
    if not all(finished(j) for j in jobs):
        require_notebook_tools()
        if slurm is not None:
            from .cluster import require_slurm

            require_slurm()
    res = run_jobs(jobs, parallel, log, slurm=slurm) if jobs else []
    failures = {}
    for job, r in zip(jobs, res):
        if r and not r["ok"] and not r.get("pending"):
            where = f"log {r['log']}" if r.get("log") else f"notebook {r['notebook']}"
            failures[(str(job.out_dir.parent), job.seed)] = f"seed{job.seed}: {r['error']} ({where})"
    out = {"tables": {}, "failed": [r for r in res if r and not r["ok"] and not r.get("pending")], "markdown": {},
           "written": {}, "pending": [r for r in res if r and r.get("pending")]}
    with folder_lock(results, what="--results", wait=120):  # one writer of RESULTS at a time
        for n in names:
            rows = collect(plans[n], seed_list, failures)
            failed = any(r["error"] for r, p in zip(rows, plans[n]) if chosen(p))  # (--cells: of those run)
            keep = failed and (Path(results) / f"{n}.md").is_file()  # never replace a table with failures
            md_path, csv_path, md = write_results(n, rows, results, scale, ".partial" if keep else "")
            if not failed:
                for ext in ("md", "csv"):
                    (Path(results) / f"{n}.partial.{ext}").unlink(missing_ok=True)
            out["tables"][n] = rows
            out["markdown"][n] = md
            out["written"][n] = (md_path, csv_path)
            log("")
            log(md)
            log(f"wrote {md_path} and {csv_path}" + (f" (runs failed: the previous {n}.md is kept)" if keep else ""))
    if out["failed"]:  # (a cell that cannot start was refused above, before any ran)
        log(f"\n{len(out['failed'])} run(s) failed:")
        for r in out["failed"]:
            log(f"  {r['label']}: {r['error']}\n    executed notebook: {r['notebook']}"
                + (f"\n    log: {r['log']}" if r.get("log") else ""))
    return out


def main(args) -> int:
    """``hallnll reproduce`` (see :mod:`hallnll.tools.cli`): 0 when every run finished, 1 when some
    failed (the results of the others are still written), 2 on bad input."""
    table = getattr(args, "table", None)
    scale = getattr(args, "scale", "quick") or "quick"
    extra = list(getattr(args, "set", None) or [])
    try:
        if getattr(args, "list", False):
            names = table_names(table) if table else None
            print(list_tables(names, scale, extra))
            return 0
        if not table:
            raise ReproduceError(f"give a table: {', '.join(TABLES)} or all (see --list)")
        from .cli import slurm_options

        out = reproduce(table, scale, getattr(args, "seeds", None), 1 if getattr(args, "parallel", None) is None else args.parallel,
                        getattr(args, "runs", "runs/reproduce"), getattr(args, "results", "results"), extra,
                        slurm=slurm_options(args),
                        cells=getattr(args, "cells", None) and args.cells.split(","))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bad = out["failed"] or any(r["error"] for rows in out["tables"].values() for r in rows)
    return 1 if bad else 0
