"""Does the method learn on real data? ``hallnll fidelity``: the four
variants of Table 5 side by side on a real CIFAR-10 subset, on clean labels
and on the published classification-based 40% labels of the same images.

Digits cannot show a fault in the method (every variant scores 97-99%
there); this check can, on a CPU, in about an hour. One grid, one seed (or
several), the same data and initialisation for every cell:

    labels  x  variant
    clean      ce  gmm  easy  hallnll        (noise=none)
    noisy      ce  gmm  easy  hallnll        (the params file's noise, e.g. dependent0.4.csv)

Each cell is an ordinary :class:`hallnll.tools.jobs.Job` (one run of
:func:`hallnll.train.fit`, in ``OUT/<labels>/<variant>/seed<k>``, skipped
when finished with the same settings), so the grid runs in parallel
processes and resumes. The report prints per-epoch test accuracy of every
cell, the selection figures of the SSL variants (easy precision, |labeled|,
|clean-hard| and its precision, the accuracy of the model's predictions on
the unlabeled set, anchor similarity), best and last accuracy, and the
expectations of the paper as checks:

- clean labels: every SSL variant ends at or above ``ce`` (within ``tol``);
- noisy labels: ``ce < gmm < easy <= hallnll`` (Table 5's order) on last
  accuracy, by margins larger than the seed spread when there are seeds.

With ``reference`` (``--reference DIR``: the JSON tables that
``benchmarks/dividemix_reference.py`` wrote for the same data and schedule,
DivideMix's official training loop transcribed) the report adds those runs
and checks per label set that do not depend on the scale: ``ce`` at or
above DivideMix's cross-entropy, ``gmm`` (the paper's Table 5 row 1, DivideMix
without co-training) at or above DivideMix's own one-network loop, each within
``ref_tol``. A faithful implementation passes them where the recipe itself
does not yet beat cross-entropy; a broken step fails them.

DivideMix itself, the baseline of Tables 1, 3 and 4, is the variant
``dividemix`` (two co-trained networks, ``nets=2`` added to its cells): not in
the default grid, added with ``--variants ce,gmm,easy,hallnll,dividemix`` on
the same data, seeds and schedule. With ``reference`` its cell is checked for
*agreement* with ``dividemix_reference.py --nets 2``: the two means differ by
no more than the seed spread (the reference's tables of one loop, one per
``--seed``, are its seeds). DivideMix's own schedule is ``batch_size=64
warmup_batch_size=128`` (its ``--batch-size 64``).

The settings live in ``params/fidelity-cifar10.yaml``; the report is also
written to ``OUT/fidelity.md`` and ``OUT/fidelity.json``.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..config import ConfigError, load_config
from ..config import VARIANTS as _ALL_VARIANTS
from .jobs import Job, run_jobs
from ..reporting import atomic_write_text, read_metrics
from .text import table

#: the grid's default variants: Table 5's rows (config.VARIANTS without dividemix, the baseline of its own,
#: which ``--variants ce,gmm,easy,hallnll,dividemix`` adds: two networks, see ``reference_checks``)
VARIANTS = tuple(v for v in _ALL_VARIANTS if v != "dividemix")
LABELS = ("clean", "noisy")
SSL_VARIANTS = ("gmm", "easy", "hallnll")

# selection figures shown per SSL cell: metrics.jsonl key -> (column, percent?)
SELECTION_KEYS = {
    "precision_easy": ("easy prec %", True),
    "n_labeled": ("|labeled|", False),
    "n_clean_hard": ("|clean-hard|", False),
    "precision_clean_hard": ("clean-hard prec %", True),
    "unlabeled_pred_acc": ("unl. pred acc %", True),
    "target_acc": ("target acc %", True),
    "label_noise_rate": ("label noise %", True),
    "anchor_valid_share": ("anchors valid %", True),
    "anchor_sim_q50": ("anchor cos q50", False),
    "real_pair_sim_q50": ("real-pair cos q50", False),
}
# where the hallnll cells' anchors lie (reporting.anchor_geometry), last epoch: key -> column
ANCHOR_KEYS = {
    "hal_cos_u": "cos(a,u)", "hal_cos_v": "cos(a,v)", "hal_cos_uv": "cos(u,v)", "hal_opt_cos_v": "L_clo opt cos(a,v)",
    "hal_v_share": "share of way to v", "hal_norm_ratio": "norm a / real", "hal_p_u": "p(y_u)", "hal_p_v": "p(y_v)",
    "hal_p_u_real_norm": "p(y_u) at real norm", "hal_p_v_real_norm": "p(y_v) at real norm",
    "hal_within_cos": "within-class cos", "easy_within_cos": "easy within-class cos",
    "hal_parent_top": "own parent in top 5%", "hal_nearest_distinct": "distinct nearest hard",
}


@dataclass
class Cell:
    labels: str  # clean | noisy
    variant: str
    seeds: list  # one metrics history per seed
    planned: int = 0  # the epochs each run is configured for (a partial report has fewer)


def plan(params, overrides: Sequence[str], out, seeds: int = 1,
         variants: Sequence[str] = VARIANTS, labels: Sequence[str] = LABELS) -> list:
    """One job per (labels, variant, seed); clean labels are ``noise=none``."""
    overrides = list(overrides or [])
    cfg = load_config(params, overrides)  # refuses a bad setting before anything runs
    if cfg.noise == "none" and "noisy" in labels:
        raise ConfigError("fidelity: the params file's noise is 'none'; the noisy half of the grid needs a noise "
                         "(e.g. noise=file with the published dependent0.4.csv)")
    jobs = []
    for lab in labels:
        for v in variants:
            for s in range(cfg.seed, cfg.seed + max(1, int(seeds))):
                extra = [f"variant={v}", f"name={cfg.name}-{lab}-{v}", "progress=false"] + (["noise=none"] if lab == "clean" else [])
                extra += ["nets=2"] if v == "dividemix" else []  # DivideMix co-trains two networks
                jobs.append(Job(f"{lab}/{v} seed{s}", str(params), overrides + extra, s,
                                Path(out) / lab / v / f"seed{s}"))
    return jobs


def collect(jobs: list, partial: bool = False) -> dict:
    """``{(labels, variant): Cell}`` from the jobs' ``metrics.jsonl``: finished runs
    only, or with ``partial`` whatever epochs an unfinished run has written."""
    cells: dict = {}
    for job in jobs:
        lab, rest = job.label.split("/", 1)
        v = rest.split()[0]
        cell = cells.setdefault((lab, v), Cell(lab, v, [], job.config().epochs))
        m = Path(job.out_dir) / "metrics.jsonl"
        if m.is_file() and (partial or (Path(job.out_dir) / "summary.json").is_file()):
            rows = read_metrics(m)
            if rows:
                cell.seeds.append(rows)
    return cells


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _std(xs):
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else None


def cell_summary(cell: Cell) -> dict:
    """Best and last test accuracy (mean and std over seeds) and the last epoch's selection figures."""
    best = [max(r["test_acc"] for r in h) for h in cell.seeds]
    last = [h[-1]["test_acc"] for h in cell.seeds]
    n = min(len(h) for h in cell.seeds)  # the epochs every seed has reached
    out = {"labels": cell.labels, "variant": cell.variant, "n_seeds": len(cell.seeds),
           "epochs": n, "planned": cell.planned,
           "per_epoch": [_mean([h[e]["test_acc"] for h in cell.seeds]) for e in range(n)],
           "phases": [cell.seeds[0][e]["phase"] for e in range(n)],
           "per_epoch_std": [_std([h[e]["test_acc"] for h in cell.seeds]) for e in range(n)],
           "best": _mean(best), "best_std": _std(best), "last": _mean(last), "last_std": _std(last),
           "seconds": _mean([sum(r.get("seconds", {}).get("total", 0.0) for r in h) for h in cell.seeds])}
    for key in (*SELECTION_KEYS, *ANCHOR_KEYS):
        out[key] = _mean([h[-1].get(key) for h in cell.seeds])
    return out


def _where(e: int, planned: int) -> str:
    """The epoch two runs are compared at, and "partial" where one had more planned."""
    return f"epoch {e}" + (f", partial: {planned} planned" if planned and e < planned else "")


def _checklist(res: list) -> str:
    return "\n".join(f"- [{'x' if ok else ' '}] {d}: {detail}" for d, ok, detail in res)


def _check_records(res: list) -> list:
    return [{"check": d, "holds": ok, "detail": det} for d, ok, det in res]


def checks(summaries: dict, tol: float = 0.005) -> list:
    """The paper's expectations as ``(description, holds, detail)``; see the module docstring.

    Two cells are compared at the last epoch both have reached: the end of the
    run, or, in a report of a grid cut short (``--report-only``), an earlier
    epoch, which the detail names ("partial")."""
    out = []

    def at(lab, v, other):
        s, o = summaries.get((lab, v)), summaries.get(other)
        if not s or not o or not s["epochs"] or not o["epochs"]:
            return None
        e = min(s["epochs"], o["epochs"])
        if s["phases"][e - 1] == "warmup" and o["phases"][e - 1] in ("warmup", "ce"):
            return None  # nothing told apart yet: the variants share the warm-up
        return s["per_epoch"][e - 1], s["per_epoch_std"][e - 1] or 0.0, e, max(s["planned"], o["planned"])

    for v in SSL_VARIANTS:
        a, c = at("clean", v, ("clean", "ce")), at("clean", "ce", ("clean", v))
        if a and c:
            out.append((f"clean: {v} ends at or above ce (tolerance {100 * tol:.1f} points)", a[0] >= c[0] - tol,
                        f"{100 * a[0]:.2f} vs {100 * c[0]:.2f} ({100 * (a[0] - c[0]):+.2f}; {_where(a[2], a[3])})"))
    order = [("ce", "gmm", "<"), ("gmm", "easy", "<"), ("easy", "hallnll", "<=")]
    for lo, hi, rel in order:
        a, b = at("noisy", lo, ("noisy", hi)), at("noisy", hi, ("noisy", lo))
        if not a or not b:
            continue
        margin = max(a[1], b[1])  # the seed spread; 0 with one seed
        holds = (b[0] - a[0] > margin) if rel == "<" else (b[0] - a[0] >= -margin)
        spread = f", seed spread {100 * margin:.2f}" if margin else ""
        out.append((f"noisy: {lo} {rel} {hi}", holds,
                    f"{100 * a[0]:.2f} vs {100 * b[0]:.2f} ({100 * (b[0] - a[0]):+.2f}{spread}; {_where(a[2], a[3])})"))
    return out


REFERENCE_LOOPS = {0: "cross-entropy", 1: "one network", 2: "two networks (DivideMix)"}
#: the hallnll variant each reference loop is the yardstick of: ce and gmm must end at or above
#: DivideMix's cross-entropy and one-network loops; dividemix, DivideMix itself, must agree with its two-network loop
REFERENCE_OF = {"ce": 0, "gmm": 1, "dividemix": 2}


def read_reference(folder) -> dict:
    """``{(labels, nets): {"per_epoch": [...], "per_epoch_std": [...], "seeds": n, "best", "best_std",
    "last", "last_std", "labeled", "labeled_precision", "epochs", "planned", "file"}}`` from the JSON
    tables of ``benchmarks/dividemix_reference.py`` in ``folder`` (accuracy as a fraction; the
    tables of one loop, one per ``--seed``, are its seeds: means and std over them, per epoch up to
    the last epoch every seed reached; ``labeled`` / ``labeled_precision``: the last epoch's)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--reference {folder}: not a folder (give the folder holding the JSON tables of "
                          f"benchmarks/dividemix_reference.py)")
    runs: dict = {}
    for p in sorted(folder.glob("*.json")):
        try:
            d = json.loads(p.read_text())
            a, rows = d["args"], d["rows"]
            key = (a["labels"], int(a["nets"]))
            acc = [float(r["test_acc"]) / 100 for r in rows]
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # another JSON file: not a reference table
        if acc:
            runs.setdefault(key, []).append((p.name, int(a.get("epochs", len(acc))), acc, rows[-1]))
    if not runs:
        raise ConfigError(f"--reference {folder}: no JSON table of benchmarks/dividemix_reference.py there "
                          f"(run it with --out {folder}/<labels>-<nets>[-seed<k>].json)")
    out = {}
    for key, seeds in runs.items():
        n = min(len(acc) for _, _, acc, _ in seeds)
        best = [max(acc) for _, _, acc, _ in seeds]
        last = [acc[-1] for _, _, acc, _ in seeds]
        out[key] = {"per_epoch": [_mean([acc[e] for _, _, acc, _ in seeds]) for e in range(n)],
                    "per_epoch_std": [_std([acc[e] for _, _, acc, _ in seeds]) for e in range(n)],
                    "seeds": len(seeds), "epochs": n, "planned": max(pl for _, pl, _, _ in seeds),
                    "best": _mean(best), "best_std": _std(best), "last": _mean(last), "last_std": _std(last),
                    "labeled": _mean([r.get("labeled") for *_, r in seeds]),
                    "labeled_precision": _mean([r.get("labeled_precision") for *_, r in seeds]),
                    "file": ", ".join(name for name, *_ in seeds)}
    return out


def reference_checks(summaries: dict, reference: dict, ref_tol: float = 0.02) -> list:
    """``ce`` and ``gmm`` against DivideMix's own loops (at or above, within ``ref_tol``), and
    ``dividemix`` against its two-network loop (the same method: the two means differ by no more
    than the seed spread, the larger std of the two sides, or ``ref_tol`` where neither has seeds),
    each at the last epoch both reached."""
    out = []
    for lab in LABELS:
        for v, nets in REFERENCE_OF.items():
            s, r = summaries.get((lab, v)), reference.get((lab, nets))
            if not s or not r or not s["epochs"]:
                continue
            e = min(s["epochs"], r["epochs"])
            if v != "ce" and s["phases"][e - 1] == "warmup":
                continue  # no MixMatch epoch to compare yet
            ours, theirs = s["per_epoch"][e - 1], r["per_epoch"][e - 1]
            where = _where(e, max(s["planned"], r["planned"]))
            if v == "dividemix":
                spread = max(s["per_epoch_std"][e - 1] or 0.0, r["per_epoch_std"][e - 1] or 0.0)
                margin, what = (spread, f"seed spread {100 * spread:.2f}") if spread else (ref_tol, "no seeds")
                out.append((f"{lab}: dividemix agrees with DivideMix's own loop, {REFERENCE_LOOPS[nets]} (within the "
                            f"seed spread; {100 * ref_tol:.1f} points without seeds)", abs(ours - theirs) <= margin,
                            f"{100 * ours:.2f} vs {100 * theirs:.2f} ({100 * (ours - theirs):+.2f}; {what}; "
                            f"{s['n_seeds']} vs {r['seeds']} seeds; {where})"))
                continue
            out.append((f"{lab}: {v} at or above DivideMix's own loop, {REFERENCE_LOOPS[nets]} (tolerance "
                        f"{100 * ref_tol:.1f} points)", ours >= theirs - ref_tol,
                        f"{100 * ours:.2f} vs {100 * theirs:.2f} ({100 * (ours - theirs):+.2f}; {where})"))
    return out


def _pct(x, std=None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def format_report(cells: dict, header: str = "", tol: float = 0.005, reference: Optional[dict] = None,
                  ref_tol: float = 0.02) -> tuple:
    """The report as markdown text and as a JSON-able dict (``reference``: :func:`read_reference`)."""
    keys = [(lab, v) for lab in LABELS for v in _ALL_VARIANTS if (lab, v) in cells and cells[(lab, v)].seeds]
    summaries = {k: cell_summary(cells[k]) for k in keys}
    parts = [header] if header else []
    # per-epoch test accuracy (mean over seeds)
    n_ep = max((len(h) for k in keys for h in cells[k].seeds), default=0)
    rows = []
    for e in range(n_ep):
        phase = next((h[e]["phase"] for k in keys for h in cells[k].seeds if len(h) > e and h[e]["phase"] != "ce"), "ce")
        row = [e + 1, phase]
        for k in keys:
            row.append(_pct(_mean([h[e]["test_acc"] for h in cells[k].seeds if len(h) > e])))
        rows.append(row)
    parts.append("Test accuracy (%) per epoch (eval mode; mean over seeds):\n\n"
                 + table(rows, ["epoch", "phase"] + [f"{lab}/{v}" for lab, v in keys], fmt="markdown"))
    rows = []
    for k in keys:
        s = summaries[k]
        row = [k[0], k[1], s["n_seeds"], f"{s['epochs']}/{s['planned']}", _pct(s["best"], s["best_std"]),
               _pct(s["last"], s["last_std"])]
        for key, (_, pct) in SELECTION_KEYS.items():
            v = s[key]
            row.append("-" if v is None else (_pct(v) if pct else (f"{v:.0f}" if key.startswith("n_") else f"{v:.3f}")))
        row.append(f"{s['seconds']:.0f}" if s["seconds"] else "-")
        rows.append(row)
    parts.append("Best and last test accuracy (%), and the last epoch's selection:\n\n"
                 + table(rows, ["labels", "variant", "seeds", "epochs", "best %", "last %"]
                          + [c for c, _ in SELECTION_KEYS.values()] + ["seconds"], fmt="markdown"))
    rows = [[k[0], k[1]] + ["-" if summaries[k][key] is None else f"{summaries[k][key]:.{0 if key.endswith('distinct') else 3}f}"
                            for key in ANCHOR_KEYS]
            for k in keys if summaries[k]["hal_cos_u"] is not None]
    if rows:
        parts.append("The last epoch's anchors S_hal against their parents (§3.2, means over anchors and seeds):\n\n"
                     + table(rows, ["labels", "variant"] + list(ANCHOR_KEYS.values()), fmt="markdown"))
    res = checks(summaries, tol)
    parts.append("Checks (the paper's expectations):\n\n" + _checklist(res))
    ref_res = []
    if reference:
        rows = [[lab, REFERENCE_LOOPS[n], r["seeds"], f"{r['epochs']}/{r['planned']}", _pct(r["best"], r["best_std"]),
                 _pct(r["last"], r["last_std"]), "-" if r["labeled"] is None else f"{r['labeled']:.0f}",
                 _pct(r["labeled_precision"]), r["file"]] for (lab, n), r in sorted(reference.items())]
        parts.append("DivideMix's own training loop on the same data (benchmarks/dividemix_reference.py; "
                     "best and last: mean ± std over its seeds; the last epoch's labeled set):\n\n"
                     + table(rows, ["labels", "loop", "seeds", "epochs", "best %", "last %", "|labeled|",
                                    "labeled prec %", "file"], fmt="markdown"))
        ref_res = reference_checks(summaries, reference, ref_tol)
        parts.append("Checks against DivideMix's own loop (an implementation fault, at any scale):\n\n"
                     + _checklist(ref_res))
    report = {"summaries": [summaries[k] for k in keys], "checks": _check_records(res),
              "reference_checks": _check_records(ref_res),
              "reference": {f"{lab}/{n}": r for (lab, n), r in (reference or {}).items()},
              "per_epoch": {f"{lab}/{v}": [[r["test_acc"] for r in h] for h in cells[(lab, v)].seeds]
                            for lab, v in keys}}
    return "\n\n".join(parts) + "\n", report


def describe(params, overrides, data_note: str = "") -> str:
    """One paragraph naming the data and the schedule of the grid."""
    cfg = load_config(params, overrides)
    data = data_note or cfg.dataset
    sub = (f"first {cfg.train_subset or 'all'} training / {cfg.test_subset or 'all'} test images"
           if (cfg.train_subset or cfg.test_subset) else "all images")
    width = f" width {cfg.width}" if cfg.width else ""
    noise = cfg.noise + (f" ({Path(cfg.noise_file).name})" if cfg.noise == "file" else "")
    return (f"fidelity: {data}, {sub}; {cfg.arch}{width}; {cfg.epochs} epochs (warm-up {cfg.warmup_epochs}, "
            f"lr {cfg.lr} /10 at {cfg.lr_decay_epoch}), batch {cfg.batch_size}, P {cfg.p}, lambda_conf "
            f"{cfg.lambda_conf}, lambda_mse {cfg.lambda_mse}; noisy labels: {noise}; seed {cfg.seed}.")


def run(params, overrides=(), out="runs/fidelity", seeds: int = 1, parallel: int = 1,
        variants: Sequence[str] = VARIANTS, labels: Sequence[str] = LABELS, resume: bool = True,
        tol: float = 0.005, data_note: str = "", report_only: bool = False, log=print,
        reference=None, ref_tol: float = 0.02) -> dict:
    """Plan, run (skipping finished cells) and report the grid; returns the report dict.

    ``reference``: a folder of ``benchmarks/dividemix_reference.py`` tables, read
    (and refused if it holds none) before any cell runs.
    ``data_note`` names the data in the report (e.g. "CIFAR-10 (JPEG q75 copy)");
    ``report_only`` runs nothing and reports what the cells have written so far
    (unfinished runs included: e.g. after a time limit cut the grid short)."""
    bad = [v for v in variants if v not in _ALL_VARIANTS] + [lab for lab in labels if lab not in LABELS]
    if bad:
        raise ConfigError(f"fidelity: unknown {', '.join(map(repr, bad))}; variants are {', '.join(_ALL_VARIANTS)}, "
                         f"labels {', '.join(LABELS)}")
    ref = read_reference(reference) if reference else None
    out = Path(out)
    jobs = plan(params, overrides, out, seeds, variants, labels)
    out.mkdir(parents=True, exist_ok=True)
    header = describe(params, overrides, data_note)
    log(header)
    results = [] if report_only else run_jobs(jobs, parallel, log, resume)
    failed = [r for r in results if not r["ok"]]
    text, report = format_report(collect(jobs, partial=report_only), header, tol, ref, ref_tol)
    if failed:
        text += "\nFailed cells:\n" + "\n".join(f"- {r['label']}: {r['error']}" for r in failed) + "\n"
    report.update(header=header, failed=[{"label": r["label"], "error": r["error"]} for r in failed])
    atomic_write_text(out / "fidelity.md", text)
    atomic_write_text(out / "fidelity.json", json.dumps(report, indent=1) + "\n")
    log("\n" + text)
    log(f"wrote {out / 'fidelity.md'} and {out / 'fidelity.json'}")
    return report


def main(args) -> int:
    from ..lock import check_output

    check_output(args.out)  # first of all (each cell's run folder is locked by its fit)
    run(args.params, args.set, args.out, args.seeds, args.parallel, tuple(args.variants.split(",")),
        tuple(args.labels.split(",")), not args.no_resume, args.tol, args.data_note, args.report_only,
        reference=args.reference, ref_tol=args.ref_tol)
    return 0
