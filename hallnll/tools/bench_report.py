"""The bench's tables: the per-phase table of ``hallnll bench``, the one-line rows of
``--levers``, and :func:`speed_summary` (the rows of benchmarks/README.md from the files of
benchmarks/gpu-speed.sh)."""
from __future__ import annotations

import json
from pathlib import Path

from .bench import PHASES
from .text import table


def format_table(report: dict) -> str:
    peak = report["bench"]["peak_tflops"]
    head = ["phase", "s/epoch", "first s", "items/s", "unit", "TFLOP/s", f"% of {peak:g}"]
    rows = []
    for p in PHASES:
        ph = report["phases"][p]
        if ph.get("skipped"):
            rows.append([p, "-", "-", "-", ph["unit"], "-", "-"])
            continue
        first = ",".join(f"{s:.3f}" for s in ph["first_seconds"]) or "-"
        ips = ph["items_per_s"]
        no_flops = not ph["tflops"]
        rows.append([p, f"{ph['seconds_per_epoch']:.3f}", first, f"{ips:,.0f}" if ips >= 100 else f"{ips:.1f}",
                     ph["unit"], "-" if no_flops else f"{ph['tflops']:.3f}", "-" if no_flops else f"{ph['pct_peak']:.2f}"])
    lines = [table(rows, head)]
    e, pr = report["epoch_seconds"], report["projected_run"]
    lines.append("")
    lines.append(f"epoch: warm-up {e['warmup_epoch']:.3f} s, SSL {e['ssl_epoch']:.3f} s (incl. eval); "
                 f"projected {pr['epochs']}-epoch run ({pr['warmup_epochs']} warm-up, "
                 f"{pr.get('checkpoints', 0)} checkpoints): {pr['seconds']:.0f} s = {pr['minutes']:.1f} min")
    return "\n".join(lines)


def header(report: dict) -> str:
    dd, b, f = report["data"], report["bench"], report["flops"]
    c = report["config"]
    return (f"hallnll bench on {report['device']} (torch {report['torch']}), {dd['source']} "
            f"{dd['n_train']} train / {dd['n_test']} test {tuple(dd['shape'])}, {c['arch']}, variant {c['variant']}, "
            f"batch {c['batch_size']}, bf16={b['bf16_active']} channels_last={b['channels_last_active']} "
            f"compile={b['compile_active']}; {b['epochs']} measured run(s) per phase after {b['warmup']} excluded; "
            f"model forward {f['model_forward_per_image'] / 1e9:.4f} GFLOP/image")


_WIDTHS = (15, 6, 9, 7, 10, 7, 7, 9, 10, 8, 0)


def row_text(cells) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, _WIDTHS)).rstrip()


def _check_text(c) -> str:
    if not c:
        return "-"
    if "max_abs_omega_diff" in c:
        return (f"max omega diff {c['max_abs_omega_diff']:.1e}, easy sets "
                f"{'same' if c['same_easy_eq1'] and c['same_easy_threshold'] else 'DIFFER'}")
    return (f"max anchor diff {c['max_abs_anchor_diff']:.1e}, parents {'same' if c['same_parents'] else 'DIFFER'}, "
            f"hard selection {'same' if c['same_clean_hard'] and c['same_corrected'] else 'DIFFERS'}")


def lever_cells(e: dict) -> list:
    if e.get("skipped") or e.get("error"):
        return [e["name"], "yes" if e["active"] else "no", "-", "-", "-", "-", "-", "-", "-", "-",
                "skipped: " + e["skipped"] if e.get("skipped") else "FAILED: " + e["error"][:200]]

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    return [e["name"], "yes" if e["active"] else "no", f(e["warmup_epoch"]), f(e["ssl_epoch"]), f(e["easiness"]),
            f(e["hallucination"]), f(e["ssl"]), f(e["projected_minutes"], "{:.1f}"), f(e["test_acc"] and 100 * e["test_acc"], "{:.2f}"),
            f(e.get("delta_acc_points"), "{:+.2f}"), _check_text(e.get("check"))]


def speed_summary(folder) -> str:
    """The rows for benchmarks/README.md from the files of ``benchmarks/gpu-speed.sh OUTDIR``
    (env.txt, resnet34.json, parallel.json, levers.json); what is missing is said so."""
    from .bench_levers import LEVER_NAMES

    folder = Path(folder)

    def load(name):
        p = folder / name
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    env = (folder / "env.txt").read_text().strip() if (folder / "env.txt").is_file() else "env.txt missing"
    lines = ["## Speed levers: the figures of benchmarks/gpu-speed.sh", "", "```", env, "```", ""]
    lev = load("levers.json")
    if lev is None:
        lines += ["levers: **missing** (see levers.log)", ""]
    else:
        d = lev["data"]
        lines += [f"Levers on {lev['device']} (torch {lev['torch']}), {d['source']} {d['n_train']} train / "
                  f"{d['n_test']} test, {lev['base_config']['arch']}, batch {lev['base_config']['batch_size']}, "
                  f"{lev['warmup']} excluded + {lev['epochs']} measured epoch(s) of each kind per lever, seed "
                  f"{lev['base_config']['seed']}; each lever on top of the ones above it:", "",
                  "| lever | active | warm-up epoch s | SSL epoch s | easiness s | hallucination s | ssl s | "
                  "projected 200 epochs, min | test acc % (short run) | vs baseline, points | check |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        done = {e["name"] for e in lev["levers"]}
        for e in lev["levers"]:
            lines.append("| " + " | ".join(str(c) for c in lever_cells(e)) + " |")
        for name in LEVER_NAMES:
            if name not in done and name != "compile_model":
                lines.append(f"| {name} | | | | | | | | | | not run (time limit of the step; see levers.log) |")
        lines.append("")
    r34 = load("resnet34.json")
    if r34 is None:
        lines += ["Step 1 (ResNet-34): **missing** (see resnet34.log)", ""]
    else:
        e, pr = r34["epoch_seconds"], r34["projected_run"]
        lines += [f"Step 1, {r34['config']['arch']} on {r34['device']}, {r34['data']['source']} (defaults + fused SGD + "
                  f"hallucinator graph): warm-up epoch {e['warmup_epoch']:.3f} s, SSL epoch {e['ssl_epoch']:.3f} s "
                  f"(|labeled| {r34['sanity'].get('n_labeled')}), projected {pr['epochs']} epochs "
                  f"{pr['minutes']:.1f} min."]
        sc = r34.get("sync_check")
        if sc and not sc.get("skipped"):
            lines.append("Host synchronisations per Run step: " + ", ".join(
                f"{k} {v['syncs']}" for k, v in sc.items() if isinstance(v, dict)) + ".")
        lines.append("")
    par = load("parallel.json")
    if par is None or not par.get("complete"):
        lines += ["3 seeds at once: **missing or incomplete** (see parallel.log)", ""]
    else:
        lines += [f"`train --seeds 3 --parallel 3` against one seed (same short schedule): "
                  f"{par['three_parallel_wall_seconds']:.1f} s vs {par['one_wall_seconds']:.1f} s, "
                  f"ratio {par['ratio']:.2f} (target <= 1.5).", ""]
    return "\n".join(lines)
