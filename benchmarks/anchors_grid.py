"""Issue 17's downstream grid: what the hallucinator (Eq. 2) changes in the selection it feeds.

On a CIFAR-10 subset, clean and noisy labels, several seeds: ``easy`` (Eq. 1 alone),
``hallnll`` with the hallucinator as shipped (``hal_skip: true``, ``hal_norm: parents``)
and ``hallnll`` with the old one (``hal_skip=false hal_norm=free``). The three share one
warm-up per (labels, seed) (``fit(..., warm_start=...)``: each ends as from scratch).
Per cell, from ``metrics.jsonl`` (means over the SSL epochs, and the last epoch) and the
last epoch's ``labels.csv``: clean-hard count and precision, the K-vote labels' accuracy
against the given labels of the same samples and against the final model's predictions
on them, the hard samples named some anchor's nearest, ``hal_v_share``, test accuracy.

    python benchmarks/anchors_grid.py --data-root /tmp/c10 \\
        --noise-file ../shared/data/noisy-labels/cifar10-classification-idn/dependent0.4.csv \\
        --seeds 2 --out runs/anchors-grid

Rerunning resumes (every run folder resumes or is finished); ``--report-only`` prints the
table of what has finished. Defaults: 2,000 / 1,000 images, PreActResNet-18 width 8, 16
epochs (8 warm-up, lr / 10 at 14), fp32, one thread — a CPU-scale check of mechanisms
(CIFAR-10 (JPEG q75 copy) when run on the offline copy), not the paper's scale.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

CELLS = {"easy": ["variant=easy"], "hallnll": ["variant=hallnll"],
         "hallnll-old": ["variant=hallnll", "hal_skip=false", "hal_norm=free"]}
SCALE = ["train_subset=2000", "test_subset=1000", "width=8", "epochs=16", "warmup_epochs=8", "lr_decay_epoch=14",
         "bf16=false", "cpu_bf16=false", "bn_recal_images=2000", "threads=1", "progress=false", "download=false"]


def settings(args, labels: str, seed: int) -> list:
    noise = ["noise=none"] if labels == "clean" else ["noise=file", f"noise_file={args.noise_file}"]
    return SCALE + [f"data_root={args.data_root}", f"seed={seed}"] + noise + list(args.set)


def run_grid(args) -> None:
    from hallnll import load_config
    from hallnll.train import fit

    for labels in args.labels.split(","):
        for seed in range(args.first_seed, args.seeds):
            base = settings(args, labels, seed)
            warm = Path(args.out) / f"{labels}-s{seed}" / "warmup"
            ep = load_config(args.params, base).warmup_epochs
            fit(load_config(args.params, base + ["variant=easy", f"epochs={ep}", "lr_decay_epoch=0"]), warm)
            for cell, sets in CELLS.items():
                out = Path(args.out) / f"{labels}-s{seed}" / cell
                print(f"--- {labels} seed {seed} {cell}", file=sys.stderr, flush=True)
                fit(load_config(args.params, base + sets), out, warm_start=warm / "checkpoint.pt")


def cell_row(folder: Path) -> dict | None:
    if not (folder / "summary.json").is_file():
        return None
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    ssl = [r for r in rows if r.get("phase") == "ssl"]
    mean = lambda k: (sum(r[k] for r in ssl if r.get(k) is not None) / max(1, sum(r.get(k) is not None for r in ssl))  # noqa: E731
                      if any(r.get(k) is not None for r in ssl) else None)
    with open(folder / "labels.csv") as f:
        lab = list(csv.DictReader(f))
    ch = [r for r in lab if r["subset"] in ("1", "clean_hard", "clean-hard")]
    acc = lambda col: sum(r[col] == r["true_label"] for r in ch) / len(ch) if ch else None  # noqa: E731
    last = rows[-1]
    return {"test_last": last["test_acc"], "test_best": max(r["test_acc"] for r in rows),
            "n_clean_hard": mean("n_clean_hard"), "precision_clean_hard": mean("precision_clean_hard"),
            "label_noise_rate": last.get("label_noise_rate"), "hal_v_share": mean("hal_v_share"),
            "hal_nearest_distinct": mean("hal_nearest_distinct"),
            "last_clean_hard": len(ch), "kvote_acc": acc("corrected_label"), "given_acc": acc("given_label"),
            "pred_acc": acc("predicted_label")}


def report(args) -> str:
    def f(x, pct=True):
        return "–" if x is None else (f"{100 * x:.1f}" if pct else f"{x:.0f}")

    lines = ["| labels | seed | cell | test last / best % | clean-hard (mean over SSL epochs) | its precision % "
             "| last epoch: clean-hard | K-vote right % | given right % | model's prediction right % "
             "| hal_v_share | distinct nearest | label noise after % |", "|" + "---|" * 13]
    agg: dict = {}
    for labels in args.labels.split(","):
        for seed in range(args.seeds):
            for cell in CELLS:
                r = cell_row(Path(args.out) / f"{labels}-s{seed}" / cell)
                if r is None:
                    continue
                agg.setdefault((labels, cell), []).append(r)
                lines.append(f"| {labels} | {seed} | {cell} | {f(r['test_last'])} / {f(r['test_best'])} | "
                             f"{f(r['n_clean_hard'], False)} | {f(r['precision_clean_hard'])} | {r['last_clean_hard']} | "
                             f"{f(r['kvote_acc'])} | {f(r['given_acc'])} | {f(r['pred_acc'])} | "
                             f"{'–' if r['hal_v_share'] is None else format(r['hal_v_share'], '.3f')} | "
                             f"{f(r['hal_nearest_distinct'], False)} | {f(r['label_noise_rate'])} |")
    lines += ["", "| labels | cell | seeds | test last % (mean ± spread) | K-vote right % | given right % | "
              "prediction right % |", "|" + "---|" * 7]
    for (labels, cell), rs in agg.items():
        t = [r["test_last"] for r in rs]
        m = sum(t) / len(t)
        sp = (max(t) - min(t)) / 2
        avg = lambda k: (sum(r[k] for r in rs if r[k] is not None) / len([r for r in rs if r[k] is not None])  # noqa: E731
                         if any(r[k] is not None for r in rs) else None)
        lines.append(f"| {labels} | {cell} | {len(rs)} | {100 * m:.2f} ± {100 * sp:.2f} | {f(avg('kvote_acc'))} | "
                     f"{f(avg('given_acc'))} | {f(avg('pred_acc'))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="fidelity-cifar10")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--noise-file", required=True)
    ap.add_argument("--labels", default="clean,noisy")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST..SEEDS-1 only (the report: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="runs/anchors-grid")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.report_only:
        run_grid(args)
    text = report(args)
    print(text)
    (Path(args.out) / "anchors_grid.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
