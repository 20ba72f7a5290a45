"""``--set bench.parallel=N``: N bench processes on one device at once, started
together behind a file barrier, their throughput summed."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARRIER_ENV = "HALLNLL_BENCH_BARRIER"



def barrier() -> None:
    """Multi-process mode: wait until every worker has finished its setup."""
    spec = os.environ.get(BARRIER_ENV)
    if not spec:
        return
    folder, n, k = spec.rsplit(":", 2)
    Path(folder, f"ready.{k}").touch()
    deadline = time.monotonic() + 1800
    while len(list(Path(folder).glob("ready.*"))) < int(n):
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench barrier: not all {n} workers got ready in 30 min")
        time.sleep(0.05)


def run_parallel(params, cfg_sets, opts: dict, epochs: int, json_path, n: int) -> dict:
    """N bench processes on the same device at once; per-phase throughput summed."""
    from .bench import PHASES, UNITS, bench_config

    base_cfg = bench_config(params, cfg_sets)
    stem = Path(json_path)
    work = Path(tempfile.mkdtemp(prefix="hallnll-bench-"))
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    bench_sets = [f"bench.{k}={json.dumps(v) if v is not None else 'null'}" for k, v in opts.items() if k != "parallel"]
    procs, outs = [], []
    t0 = time.perf_counter()
    for k in range(n):
        out = stem.with_name(f"{stem.stem}.worker{k}{stem.suffix or '.json'}")
        outs.append(out)
        cmd = [sys.executable, "-m", "hallnll", "bench", "--epochs", str(epochs), "--json", str(out)]
        if params:
            cmd += ["--params", str(params)]
        for s in list(cfg_sets) + [f"seed={base_cfg.seed + k}"] + bench_sets:
            cmd += ["--set", s]
        log = open(work / f"worker{k}.log", "w")
        procs.append((subprocess.Popen(cmd, env={**env, BARRIER_ENV: f"{work}:{n}:{k}"}, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    codes = []
    for p, log in procs:
        codes.append(p.wait())
        log.close()
    wall = time.perf_counter() - t0
    if any(codes):
        bad = [k for k, c in enumerate(codes) if c]
        tail = (work / f"worker{bad[0]}.log").read_text()[-3000:]
        raise RuntimeError(f"bench --parallel: worker(s) {bad} failed (exit {[codes[k] for k in bad]}); "
                           f"logs in {work}; end of worker {bad[0]}'s:\n{tail}")
    workers = [json.loads(o.read_text()) for o in outs]
    shutil.rmtree(work, ignore_errors=True)
    peak = opts["peak_tflops"]
    agg = {}
    for p in PHASES:
        ws = [w["phases"][p] for w in workers]
        if any(w.get("skipped") for w in ws):
            agg[p] = {"skipped": True, "unit": UNITS[p]}
            continue
        tfl = sum(w["tflops"] for w in ws)
        agg[p] = {"seconds_per_epoch": max(w["seconds_per_epoch"] for w in ws),
                  "mean_seconds": statistics.fmean(w["seconds_per_epoch"] for w in ws),
                  "first_seconds": [max(w["first_seconds"][i] for w in ws) for i in range(len(ws[0]["first_seconds"]))],
                  "unit": UNITS[p], "items_per_s": sum(w["items_per_s"] for w in ws), "tflops": tfl,
                  "pct_peak": 100.0 * tfl / peak}
    first = workers[0]
    report = {**{k: first[k] for k in ("kind", "date", "device", "device_type", "torch", "cuda", "python", "host",
                                        "data", "config", "bench", "flops")},
              "command": sys.argv, "parallel": n, "wall_seconds": wall, "phases": agg,
              "epoch_seconds": {k: max(w["epoch_seconds"][k] for w in workers) for k in ("warmup_epoch", "ssl_epoch")},
              "projected_run": {**first["projected_run"],
                                "seconds": max(w["projected_run"]["seconds"] for w in workers),
                                "minutes": max(w["projected_run"]["minutes"] for w in workers),
                                "note": f"each of the {n} concurrent runs"},
              "workers": [str(o) for o in outs],
              "note": ("items/s and TFLOP/s are the sums over the workers; s/epoch is the slowest worker's. "
                       "Workers start together behind a barrier and run the same schedule, so their phases overlap "
                       "closely but not exactly.")}
    return report
