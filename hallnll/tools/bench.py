"""``hallnll bench``: seconds per epoch, images/s and TFLOP/s of every phase of Alg. 1.

It runs :meth:`hallnll.run.Run.epoch`, the very epoch :func:`hallnll.train.fit`
runs, on a real model and the real data path (uint8 images resident on the
device, batched augmentation, the config's bf16 / channels_last / compile
settings), and reads each phase's seconds from the run's own
:class:`hallnll.run.Timer`, which times every step under its name:

==============  ==============================================================
phase           the Run step(s) it times
==============  ==============================================================
warmup          ``warmup_epoch``: one cross-entropy epoch, Alg. 1 lines 2-3
easiness        ``easiness`` + ``select_easy``: predict on the training set,
                per-sample loss, GMM, Eq. 1 (Alg. 1 lines 6-7)
hallucination   ``hallucinate``: the hallucinator phase, Eq. 2 (lines 8-15)
hard_select     ``select_hard``: nearest-anchor search + K-vote, §3.3 (line 17)
ssl             ``ssl_epoch``: one MixMatch epoch, Eq. 3 (lines 20-23)
eval            ``evaluate``: test accuracy, large batches
checkpoint      ``save``: the checkpoint fit writes after an epoch
                (``Run.state_dict``, to a temporary folder)
predict_train   diagnostic only: engine.predict on the training set alone, so
                that easiness - predict_train is the GMM + Eq. 1 cost
==============  ==============================================================

The device is synchronised only at phase boundaries. The bench runs
``warmup + epochs`` warm-up epochs, then as many SSL epochs (the config's
``warmup_epochs`` is set to that count for the bench); the first ``warmup``
runs of each phase (default 1: CUDA context, cuDNN autotuning,
torch.compile) are reported apart as ``first_seconds`` and excluded from the
per-epoch figures (the median of the measured runs; mean and min are in the
JSON).

FLOPs: the model's forward FLOPs per image are counted once with
:class:`torch.utils.flop_counter.FlopCounterMode` on one batch (convolutions
and matrix products, 2 FLOPs per multiply-add); a training image costs 3x a
forward (forward + backward). An SSL iteration runs a no-grad forward on all
2B labeled + 2B unlabeled views (the targets) and a training step on the
mixed batch of the same size: 4x the forward per row. The hallucinator's
FLOPs are counted the same way; the nearest-anchor search costs
2 * |S_hal| * |S_h| * d. TFLOP/s are reported against a stated peak (default
800 TFLOP/s, dense bf16 of one H100, as the speed issue states it).

Data: without a params file the bench uses CIFAR-10-shaped synthetic data
(random uint8 ``[50000, 3, 32, 32]`` with random labels, 10,000 test
images), so it needs no download; the arithmetic is the same as on
CIFAR-10, only the sizes of the selected subsets (hence SSL iterations)
differ from a real run. ``--set dataset=digits`` uses the real digits; a
params file (or ``--set bench.synthetic=false``) uses the real data it names.

Bench-only settings go through ``--set bench.KEY=VALUE`` (they are not
Config fields):

- ``bench.synthetic``: true | false | auto (default: synthetic CIFAR-shaped
  data when no params file and no data_root is given and dataset is CIFAR);
- ``bench.n_train`` / ``bench.n_test``: sizes of the synthetic set
  (default 50000 / 10000; 4096 / 1024 on a CPU);
- ``bench.warmup``: excluded first runs per phase (default 1);
- ``bench.peak_tflops``: the peak the % column refers to (default 800);
- ``bench.parallel``: N > 1 launches N bench processes on the same device
  at once (seeds seed..seed+N-1, started together behind a barrier) and
  reports the summed throughput;
- ``bench.sync_check``: on CUDA, one more epoch of each kind with
  ``torch.cuda.set_sync_debug_mode("warn")``, counting host syncs per Run step;
- ``bench.deadline``: with ``--levers``, start no further lever after this
  many seconds (0: no limit; the JSON is written after every lever, so a run
  cut short keeps the rows it finished).

cuDNN benchmark mode is the Config field ``cudnn_benchmark`` (on by default,
CUDA only), which ``Run.epoch`` applies, so the bench measures what fit does.

``--levers`` (:func:`run_levers`): the speed levers one by one, each on top of
the ones before (:data:`LEVERS`): a fp32 eager baseline, then bf16,
channels_last, cuDNN benchmark, fused SGD, the GMM in torch, the
hallucinator step as a CUDA graph, torch.compile of the model, of the
warm-up and MixMatch steps, and those steps as CUDA graphs
(``reduce-overhead``). Every lever runs the same short schedule on the same
seed and data; its row gives the per-epoch seconds, the projected run and the
test accuracy after the short run beside the baseline's; the GMM and
hallucinator levers also compare their two implementations on the run's own
losses and features (max |omega difference|, same easy sets; same anchors,
same hard selection).

The CLI options ``--peak-tflops`` and ``--parallel`` (when the CLI has them)
do the same as the ``bench.`` keys.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .. import engine, selection
from ..config import Config, ConfigError, from_dict, load_config, parse_overrides
from ..data import CIFAR10_CLASSES, DeviceImages, ImageData, load_dataset
from ..run import Run, Timer
from ..train import prepare

DEFAULT_PEAK_TFLOPS = 800.0
PHASES = ("warmup", "easiness", "hallucination", "hard_select", "ssl", "eval", "checkpoint", "predict_train")
# phases that make up one epoch of each kind (predict_train is a diagnostic)
WARMUP_EPOCH = ("warmup", "eval")
SSL_EPOCH = ("easiness", "hallucination", "hard_select", "ssl", "eval")
UNITS = {"warmup": "images", "easiness": "images", "hallucination": "anchors", "hard_select": "hard samples",
         "ssl": "images", "eval": "images", "checkpoint": "MB", "predict_train": "images"}
BENCH_DEFAULTS = {"synthetic": "auto", "n_train": None, "n_test": None, "warmup": 1,
                  "peak_tflops": DEFAULT_PEAK_TFLOPS, "parallel": 1, "sync_check": False, "deadline": 0}
# the Config the bench starts from without a params file: CIFAR-10 shaped, the paper's batch
BENCH_BASE = {"name": "bench", "dataset": "cifar10", "arch": "preact_resnet18", "noise": "symmetric",
              "noise_rate": 0.4, "progress": False}
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
BARRIER_ENV = "HALLNLL_BENCH_BARRIER"


# ---------------------------------------------------------------- settings
def split_settings(sets) -> tuple[list, dict]:
    """Separate ``bench.KEY=VALUE`` items from Config overrides; type-check them."""
    cfg_sets, opts = [], dict(BENCH_DEFAULTS)
    for item in sets or []:
        key = item.split("=", 1)[0].strip()
        if key.startswith("bench.") or key.startswith("bench_"):
            name = key[6:]
            if name not in BENCH_DEFAULTS:
                raise ConfigError(f"--set {item!r}: unknown bench setting; use one of "
                                  + ", ".join(f"bench.{k}" for k in BENCH_DEFAULTS))
            (value,) = parse_overrides([f"x={item.split('=', 1)[1] if '=' in item else ''}"]).values()
            opts[name] = value
        else:
            cfg_sets.append(item)
    return cfg_sets, _check_opts(opts)


def _check_opts(o: dict) -> dict:
    def bad(k, msg):
        raise ConfigError(f"bench.{k}={o[k]!r} {msg}")

    if o["synthetic"] not in ("auto", True, False):
        bad("synthetic", "must be true, false or auto")
    for k in ("n_train", "n_test"):
        if o[k] is not None and (not isinstance(o[k], int) or isinstance(o[k], bool) or o[k] < 1):
            bad(k, "must be a positive integer")
    for k in ("warmup", "parallel"):
        if not isinstance(o[k], int) or isinstance(o[k], bool) or o[k] < (0 if k == "warmup" else 1):
            bad(k, "must be an integer >= " + ("0" if k == "warmup" else "1"))
    if isinstance(o["peak_tflops"], bool) or not isinstance(o["peak_tflops"], (int, float)) or o["peak_tflops"] <= 0:
        bad("peak_tflops", "must be a positive number (TFLOP/s)")
    o["peak_tflops"] = float(o["peak_tflops"])
    if not isinstance(o["sync_check"], bool):
        bad("sync_check", "must be true or false")
    if isinstance(o["deadline"], bool) or not isinstance(o["deadline"], (int, float)) or o["deadline"] < 0:
        bad("deadline", "must be a number of seconds >= 0 (0: no limit)")
    return o


def bench_config(params, cfg_sets) -> Config:
    """The Config of the bench: the params file as given, else :data:`BENCH_BASE` + overrides."""
    if params:
        cfg = load_config(params, cfg_sets)
        return cfg.replace(progress=False)
    return from_dict({**BENCH_BASE, **parse_overrides(cfg_sets)})


def synthetic_cifar(n_train: int, n_test: int, num_classes: int = 10, seed: int = 0) -> ImageData:
    """Random uint8 images ``[N, 3, 32, 32]`` with random labels: CIFAR's shapes, no download."""
    g = torch.Generator().manual_seed(seed)
    xtr = torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g)
    ytr = torch.randint(0, num_classes, (n_train,), generator=g)
    xte = torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g)
    yte = torch.randint(0, num_classes, (n_test,), generator=g)
    classes = list(CIFAR10_CLASSES) if num_classes == 10 else [str(i) for i in range(num_classes)]
    return ImageData(f"synthetic-{num_classes}", xtr, ytr, xte, yte, classes=classes, mean=CIFAR_MEAN, std=CIFAR_STD)


def _use_synthetic(cfg: Config, opts: dict, params, cfg_sets) -> bool:
    if opts["synthetic"] != "auto":
        return bool(opts["synthetic"])
    root_given = any(s.split("=", 1)[0].strip() == "data_root" for s in cfg_sets)
    return params is None and not root_given and cfg.dataset in ("cifar10", "cifar100")


# ---------------------------------------------------------------- counting
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` as counted by FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


@torch.no_grad()
def model_forward_flops(model, images: DeviceImages, batch: int) -> float:
    """Forward FLOPs per image of ``model`` (eval mode, one batch of real inputs)."""
    was = model.training
    model.eval()
    idx = torch.arange(min(batch, len(images)), device=images.device)
    x = images.batch(idx)
    try:
        flops = count_flops(lambda: model(x))
    finally:
        model.train(was)
    return flops / len(idx)


@torch.no_grad()
def hallucinator_forward_flops(hal, classifier, dim: int, dev) -> float:
    """Forward FLOPs per anchor: h_phi(s_u, s_v) and the frozen g_rho on it (Eq. 2)."""
    b = 64
    s = torch.randn(b, dim, device=dev)
    return count_flops(lambda: classifier(hal(s, s))) / b


# ---------------------------------------------------------------- the run
class _Recorder:
    def __init__(self):
        self.runs = {p: [] for p in PHASES}

    def add(self, phase, seconds, items, flops, **extra):
        self.runs[phase].append({"seconds": float(seconds), "items": items, "flops": float(flops), **extra})


def _phase_summary(runs: list, warm: int, peak: float, unit: str) -> dict:
    if not runs:
        return {"skipped": True, "unit": unit}
    first, measured = runs[:warm], runs[warm:] or runs[-1:]
    secs = [r["seconds"] for r in measured]
    med = statistics.median(secs)
    items = statistics.median([r["items"] for r in measured])
    flops = statistics.median([r["flops"] for r in measured])
    tflops = flops / med / 1e12 if med > 0 else 0.0
    return {"seconds_per_epoch": med, "mean_seconds": statistics.fmean(secs), "min_seconds": min(secs),
            "first_seconds": [r["seconds"] for r in first], "measured_runs": len(measured),
            "unit": unit, "items_per_epoch": items, "items_per_s": items / med if med > 0 else 0.0,
            "flops_per_epoch": flops, "tflops": tflops, "pct_peak": 100.0 * tflops / peak, "runs": runs}


def _barrier() -> None:
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


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ce_images(n: int, bs: int) -> tuple:
    """Steps and images of one cross-entropy epoch (engine.ce_epoch drops the last partial batch)."""
    steps = max(1, n // bs) if n >= bs else 1
    return steps, min(n, steps * bs)


def run_bench(cfg: Config, epochs: int = 3, opts: dict | None = None, data: ImageData | None = None,
              synthetic: bool = False, noisy=None, on_run=None) -> dict:
    """Time every phase of Alg. 1 on ``cfg``; returns the report (see the module docstring).

    ``data``/``noisy``: use these instead of loading them; ``on_run(run)``:
    called on the Run after the timed epochs, its dict is the report's ``check``.
    """
    opts = _check_opts({**BENCH_DEFAULTS, **(opts or {})})
    if epochs < 1:
        raise ConfigError(f"bench: epochs={epochs} must be at least 1")
    cfg = cfg.replace(progress=False)
    warm, peak = opts["warmup"], opts["peak_tflops"]
    reps = warm + epochs
    dev = engine.resolve_device(cfg.device)
    setup = {}
    t0 = time.perf_counter()
    if data is None:
        if synthetic:
            n_tr = opts["n_train"] or (50000 if dev.type == "cuda" else 4096)
            n_te = opts["n_test"] or (10000 if dev.type == "cuda" else 1024)
            data = synthetic_cifar(n_tr, n_te, 100 if cfg.dataset == "cifar100" else 10, cfg.seed)
        else:
            data = load_dataset(cfg)
    setup["load_data"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    data, noisy, _ = prepare(cfg, data, noisy, progress=False)
    setup["noisy_labels"] = time.perf_counter() - t0

    # the bench plays `reps` warm-up epochs, then `reps` SSL epochs (+1 of each for the sync check)
    extra = 1 if opts["sync_check"] and dev.type == "cuda" else 0
    n_warm = reps + extra
    run_cfg = cfg.replace(warmup_epochs=n_warm, epochs=max(cfg.epochs, 2 * n_warm))
    t0 = time.perf_counter()
    run = Run(run_cfg, data, noisy, dev)
    _sync(dev)
    setup["to_device_and_model"] = time.perf_counter() - t0
    model, n, n_test, bs = run.model, len(run.given), len(run.y_test), cfg.batch_size

    t0 = time.perf_counter()
    fwd = model_forward_flops(model, run.train_x, bs if dev.type == "cuda" else 8)
    hal_fwd = hallucinator_forward_flops(run.hal, model.classifier, model.feature_dim, dev)
    setup["count_flops"] = time.perf_counter() - t0
    d = model.feature_dim
    hal_iters = cfg.hal_iters or engine.num_iters(n, cfg.hal_batch_size or bs)
    _barrier()

    rec = _Recorder()
    sanity: dict = {}
    sync_counts: dict = {}
    ckpt_dir = tempfile.TemporaryDirectory(prefix="hallnll-bench-ckpt-")
    ckpt = Path(ckpt_dir.name) / "checkpoint.pt"
    ce_steps, ce_images = _ce_images(n, bs)
    kinds = ["warmup"] + (["ssl"] if cfg.variant != "ce" else [])
    for kind in kinds:
        for r in range(reps + extra):
            if r == reps:  # one more epoch under the sync counter
                run.timer = _SyncCounter()
                run.epoch()
                sync_counts.update(run.timer.syncs)
                run.timer = Timer(dev)
                continue
            row = run.epoch()  # exactly what fit runs, timed per step by the run's Timer
            sec = dict(run.timer.seconds)
            with run.timer.phase("checkpoint"):
                run.save(ckpt)
            rec.add("checkpoint", run.timer.seconds["checkpoint"], ckpt.stat().st_size / 1e6, 0.0)
            rec.add("eval", sec["eval"], n_test, fwd * n_test)
            if kind == "warmup":
                rec.add("warmup", sec["warmup"], ce_images, 3 * fwd * ce_images, iterations=ce_steps)
                _log(f"bench: warmup run {r + 1}/{reps}: {sec['warmup']:.3f} s "
                     f"(loss {row['train_loss']:.3f}, test acc {row['test_acc']:.3f})")
                sanity["warmup_loss"] = row["train_loss"]
                continue
            rec.add("easiness", sec["easiness"] + sec["select_easy"], n, fwd * n)
            if run.last_anchors is not None:
                m, n_hard = len(run.last_anchors["anchors"]), n - row["n_easy"]
                rec.add("hallucination", sec["hallucinate"], m, 3 * hal_fwd * m, iterations=hal_iters)
                rec.add("hard_select", sec["select_hard"], n_hard, 2.0 * m * n_hard * d, anchors=m)
            iters = engine.num_iters(row["n_labeled"], bs)
            rows = iters * (2 * bs + (2 * bs if row["n_unlabeled"] else 0))
            rec.add("ssl", sec["ssl"], rows, 4 * fwd * rows, iterations=iters, n_labeled=row["n_labeled"])
            _log(f"bench: ssl run {r + 1}/{reps}: select {sec['easiness'] + sec['select_easy']:.3f} s, hallucinate "
                 f"{sec.get('hallucinate', 0):.3f} s, hard {sec.get('select_hard', 0):.3f} s, ssl {sec['ssl']:.3f} s "
                 f"({iters} it), loss {row['train_loss']:.3f}, test acc {row['test_acc']:.3f}")
            sanity.update(ssl_loss=row["train_loss"], n_easy=row["n_easy"], n_clean_hard=row["n_clean_hard"],
                          n_labeled=row["n_labeled"], ssl_iterations=iters)
        sanity["test_acc"] = run.history[-1]["test_acc"]

    # -- diagnostic: the training-set forward pass alone
    for r in range(reps):
        run.timer.reset()
        with run.timer.phase("predict_train"), engine.cudnn_benchmark(cfg.cudnn_benchmark, dev):
            engine.predict(model, run.train_x, cfg.eval_batch_size, run.bf16)
        rec.add("predict_train", run.timer.seconds["predict_train"], n, fwd * n)

    ckpt_dir.cleanup()
    check = on_run(run) if on_run is not None else None
    phases = {p: _phase_summary(rec.runs[p], warm, peak, UNITS[p]) for p in PHASES}
    if cfg.variant == "ce":
        for p in ("easiness", "hallucination", "hard_select", "ssl"):
            phases[p]["reason"] = "variant ce has no SSL epochs"
    elif cfg.variant != "hallnll":
        for p in ("hallucination", "hard_select"):
            phases[p]["reason"] = f"variant {cfg.variant} has no hallucination"

    def epoch_total(names):
        return sum(phases[p].get("seconds_per_epoch", 0.0) for p in names)

    warm_epoch = epoch_total(WARMUP_EPOCH)
    ssl_epoch_s = epoch_total(SSL_EPOCH) if cfg.variant != "ce" else warm_epoch
    n_warm_epochs = cfg.epochs if cfg.variant == "ce" else cfg.warmup_epochs
    k = cfg.checkpoint_every
    n_ckpt = (cfg.epochs // k + (1 if cfg.epochs % k else 0)) if k else 1
    ckpt_total = n_ckpt * phases["checkpoint"]["seconds_per_epoch"]
    projected = n_warm_epochs * warm_epoch + (cfg.epochs - n_warm_epochs) * ssl_epoch_s + ckpt_total

    report = {
        "kind": "hallnll-bench",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": _device_name(dev),
        "device_type": dev.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "command": sys.argv,
        "data": {"source": "synthetic" if synthetic else data.name, "n_train": n, "n_test": n_test,
                 "shape": list(data.x_train.shape[1:]), "num_classes": run.num_classes},
        "config": cfg.to_dict(),
        "bench": {"epochs": epochs, "warmup": warm, "peak_tflops": peak,
                  "cudnn_benchmark_active": bool(cfg.cudnn_benchmark and dev.type == "cuda"),
                  "bf16_active": bool(run.bf16), "channels_last_active": bool(cfg.channels_last and (dev.type == "cuda" or run.bf16)),
                  "compile_active": bool(cfg.compile and engine.compile_active(dev, cfg.compile_backend)),
                  "compile_step_active": bool(cfg.compile_step and engine.compile_active(dev, cfg.compile_backend))},
        "flops": {"model_forward_per_image": fwd, "model_train_per_image": 3 * fwd,
                  "hallucinator_forward_per_anchor": hal_fwd, "feature_dim": d},
        "setup_seconds": setup,
        "phases": phases,
        "epoch_seconds": {"warmup_epoch": warm_epoch, "ssl_epoch": ssl_epoch_s},
        "projected_run": {"epochs": cfg.epochs, "warmup_epochs": n_warm_epochs, "seconds": projected,
                          "minutes": projected / 60.0, "checkpoints": n_ckpt, "checkpoint_seconds": ckpt_total,
                          "note": "sum of the measured per-epoch phases (checkpoints included); excludes "
                                  "start-up, data loading, noisy labels, compilation and the final label report"},
        "sanity": sanity,
    }
    if phases["easiness"].get("seconds_per_epoch") is not None and phases["predict_train"].get("seconds_per_epoch"):
        report["gmm_and_eq1_seconds"] = phases["easiness"]["seconds_per_epoch"] - phases["predict_train"]["seconds_per_epoch"]
    if opts["sync_check"]:
        report["sync_check"] = _sync_report(sync_counts, dev, cfg, n, n_test, hal_iters)
    if check is not None:
        report["check"] = check
    return report


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


class _SyncCounter(Timer):
    """A :class:`hallnll.run.Timer` that counts host synchronisations per step
    (under ``torch.cuda.set_sync_debug_mode("warn")``) instead of timing it."""

    def __init__(self):
        super().__init__(None)
        self.syncs: dict = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(0)
        k = sum("synchroniz" in str(x.message).lower() for x in caught)
        self.syncs[name] = self.syncs.get(name, 0) + k


def _sync_report(counts: dict, dev, cfg: Config, n: int, n_test: int, hal_iters: int) -> dict:
    """CUDA only: host synchronisations per Run step of one warm-up and one SSL epoch."""
    if dev.type != "cuda":
        return {"skipped": "sync debug mode needs CUDA"}
    per = {"warmup": _ce_images(n, cfg.batch_size)[0], "hallucinate": hal_iters,
           "eval": math.ceil(n_test / cfg.eval_batch_size)}
    out = {name: {"syncs": k, "iterations": per.get(name, 1), "per_iteration": k / max(per.get(name, 1), 1)}
           for name, k in counts.items()}
    out["note"] = ("per Run step (hallnll.run.Run); easiness includes the GMM on the host, select_hard and ssl the "
                   "boolean-mask indexing; syncs between steps (the metrics row) are not counted")
    return out


# ---------------------------------------------------------------- output
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
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    e, pr = report["epoch_seconds"], report["projected_run"]
    lines.append("")
    lines.append(f"epoch: warm-up {e['warmup_epoch']:.3f} s, SSL {e['ssl_epoch']:.3f} s (incl. eval); "
                 f"projected {pr['epochs']}-epoch run ({pr['warmup_epochs']} warm-up, "
                 f"{pr.get('checkpoints', 0)} checkpoints): {pr['seconds']:.0f} s = {pr['minutes']:.1f} min")
    return "\n".join(lines)


def _header(report: dict) -> str:
    dd, b, f = report["data"], report["bench"], report["flops"]
    c = report["config"]
    return (f"hallnll bench on {report['device']} (torch {report['torch']}), {dd['source']} "
            f"{dd['n_train']} train / {dd['n_test']} test {tuple(dd['shape'])}, {c['arch']}, variant {c['variant']}, "
            f"batch {c['batch_size']}, bf16={b['bf16_active']} channels_last={b['channels_last_active']} "
            f"compile={b['compile_active']}; {b['epochs']} measured run(s) per phase after {b['warmup']} excluded; "
            f"model forward {f['model_forward_per_image'] / 1e9:.4f} GFLOP/image")


def _write_json(path, obj) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, p)


# ---------------------------------------------------------------- the levers, one by one
#: (name, what it switches on, Config overrides); each lever runs on top of the ones before it
LEVERS = (
    ("baseline", "fp32, eager, scikit-learn GMM, eager hallucinator, torch's default SGD, no cuDNN benchmark",
     {"bf16": False, "channels_last": False, "cudnn_benchmark": False, "sgd_impl": "default", "gmm_backend": "sklearn",
      "hal_graph": False, "compile": False, "compile_step": False, "compile_mode": "default"}),
    ("bf16", "bf16 autocast", {"bf16": True}),
    ("channels_last", "channels_last memory format", {"channels_last": True}),
    ("cudnn_benchmark", "cuDNN benchmark mode", {"cudnn_benchmark": True}),
    ("fused_sgd", "fused SGD (one kernel per step)", {"sgd_impl": "fused"}),
    ("gmm_torch", "the loss GMM in torch on the device", {"gmm_backend": "torch"}),
    ("hal_graph", "hallucinator step as a CUDA graph", {"hal_graph": True}),
    ("compile_model", "torch.compile of the model", {"compile": True}),
    ("compile_step", "torch.compile of the warm-up and MixMatch steps (augmentation included)", {"compile_step": True}),
    ("cuda_graphs", "the compiled steps as CUDA graphs (mode reduce-overhead)", {"compile_mode": "reduce-overhead"}),
)
LEVER_NAMES = tuple(name for name, _, _ in LEVERS)


def lever_configs(base: Config, names=None) -> list:
    """``[(name, what, cfg)]``: the cumulative config of every lever in ``names`` (default all).

    A lever's config holds its own override and those of every lever listed
    before it in :data:`LEVERS` (whether or not they are in ``names``), so a
    subset measures the same configurations as the full list.
    """
    names = list(LEVER_NAMES if names is None else names)
    unknown = [n for n in names if n not in LEVER_NAMES]
    if unknown:
        raise ConfigError(f"--levers: unknown lever(s) {', '.join(unknown)}; use any of {', '.join(LEVER_NAMES)}")
    out, changes = [], {}
    for name, what, over in LEVERS:
        changes.update(over)
        if name in names:
            out.append((name, what, base.replace(**changes)))
    return out


def lever_active(name: str, cfg: Config, dev) -> bool:
    """Whether the lever changes anything on ``dev`` (bf16, channels_last, cuDNN and CUDA graphs are CUDA-only)."""
    cuda = torch.device(dev).type == "cuda"
    comp = engine.compile_active(dev, cfg.compile_backend)
    return {"baseline": True, "bf16": cuda, "channels_last": cuda, "cudnn_benchmark": cuda, "fused_sgd": True,
            "gmm_torch": True, "hal_graph": True, "compile_model": comp and not cfg.compile_step,
            "compile_step": comp, "cuda_graphs": cuda and comp and cfg.compile_backend == "inductor"}[name]


@torch.no_grad()
def check_gmm(run: Run) -> dict:
    """The torch GMM against scikit-learn's on the run's current losses: omega and the easy sets."""
    cfg = run.cfg
    logits, _ = engine.predict(run.model, run.train_x, cfg.eval_batch_size, run.bf16, features=False)
    losses = selection.per_sample_loss(logits, run.given)
    t0 = time.perf_counter()
    a = selection.fit_loss_gmm(losses, cfg.gmm_max_iter, cfg.seed, "sklearn")
    t1 = time.perf_counter()
    b = selection.fit_loss_gmm(losses, cfg.gmm_max_iter, cfg.seed, "torch")
    _sync(run.device)
    t2 = time.perf_counter()
    wa, wb = a.omega(run.device), b.omega(run.device)
    eq1 = [selection.select_easy(w, run.given, run.num_classes, cfg.p) for w in (wa, wb)]
    thr = [selection.select_gmm(w, cfg.gmm_threshold) for w in (wa, wb)]
    return {"what": "GMM torch vs scikit-learn on the run's losses", "n": len(losses),
            "max_abs_omega_diff": float((wa - wb).abs().max()), "same_easy_eq1": bool(torch.equal(*eq1)),
            "same_easy_threshold": bool(torch.equal(*thr)), "sklearn_seconds": t1 - t0, "torch_seconds": t2 - t1}


def check_hal(run: Run) -> dict:
    """The hallucinator phase as fixed-buffer steps (a CUDA graph on CUDA) against the
    eager loop, from the same state on the run's current easy features: anchors and
    the hard selection they make."""
    import copy

    from ..hallucination import StaticHalStep, hallucinate

    cfg = run.cfg
    ez = run.easiness()
    sel = run.select_easy(ez.omega)
    easy = sel.easy_mask.nonzero().squeeze(1)
    batch = cfg.hal_batch_size or cfg.batch_size
    iters = cfg.hal_iters or engine.num_iters(len(run.given), batch)
    hal0, opt0, gen0 = copy.deepcopy(run.hal.state_dict()), copy.deepcopy(run.hal_opt.state_dict()), run.gen.get_state()
    out = {}
    for mode in ("eager", "static"):
        run.hal.load_state_dict(hal0)
        run.hal_opt.load_state_dict(copy.deepcopy(opt0))  # load_state_dict keeps the given tensors as its state
        run.gen.set_state(gen0)
        step = StaticHalStep(run.hal, run.hal_opt, run.model.classifier, batch, cfg.lambda_p, run.device) \
            if mode == "static" else None
        out[mode] = hallucinate(run.hal, run.hal_opt, run.model.classifier, ez.feats[easy], run.given[easy],
                                run.num_classes, iters, batch, cfg.lambda_p, run.gen, static_step=step)
    run.hal_step = None  # the run's own graph (if any) holds the replaced momentum buffers
    e, g = out["eager"], out["static"]
    hard = sel.hard_index
    hs = [selection.select_hard(r.anchors, r.labels, ez.feats[hard], run.num_classes, cfg.lambda_conf, cfg.k)
          for r in (e, g)]
    return {"what": "hallucinator: fixed-buffer steps (CUDA graph on CUDA) vs the eager loop, same state",
            "anchors": len(e.anchors), "max_abs_anchor_diff": float((e.anchors - g.anchors).abs().max()),
            "same_parents": bool(torch.equal(e.parents, g.parents)),
            "loss_diff": float((e.loss - g.loss).abs()),
            "same_clean_hard": bool(torch.equal(hs[0].clean, hs[1].clean)),
            "same_corrected": bool(torch.equal(hs[0].corrected, hs[1].corrected))}


LEVER_CHECKS = {"gmm_torch": check_gmm, "hal_graph": check_hal}


def _lever_row(name: str, rep: dict) -> dict:
    ph = rep["phases"]

    def sec(p):
        return ph[p].get("seconds_per_epoch") if not ph[p].get("skipped") else None

    return {"warmup_epoch": rep["epoch_seconds"]["warmup_epoch"], "ssl_epoch": rep["epoch_seconds"]["ssl_epoch"],
            "warmup": sec("warmup"), "easiness": sec("easiness"), "hallucination": sec("hallucination"),
            "hard_select": sec("hard_select"), "ssl": sec("ssl"), "eval": sec("eval"),
            "first_seconds": {p: ph[p].get("first_seconds") for p in ("warmup", "ssl")},
            "projected_minutes": rep["projected_run"]["minutes"], "test_acc": rep["sanity"].get("test_acc")}


def run_levers(params, cfg_sets, opts: dict, epochs: int, json_path, names=None, log=_log) -> dict:
    """``hallnll bench --levers``: :func:`run_bench` once per lever (see the module docstring).

    Data and noisy labels are made once; every lever runs the same schedule on
    the same seed. A lever that fails is recorded with its error and the next
    one runs. The JSON is rewritten after every lever.
    """
    base = bench_config(params, cfg_sets)
    synthetic = _use_synthetic(base, opts, params, cfg_sets)
    dev = engine.resolve_device(base.device)
    t_start = time.perf_counter()
    if synthetic:
        n_tr = opts["n_train"] or (50000 if dev.type == "cuda" else 4096)
        n_te = opts["n_test"] or (10000 if dev.type == "cuda" else 1024)
        data = synthetic_cifar(n_tr, n_te, 100 if base.dataset == "cifar100" else 10, base.seed)
    else:
        data = load_dataset(base)
    data, noisy, _ = prepare(base, data, progress=False)
    report = {"kind": "hallnll-bench-levers", "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "device": _device_name(dev), "device_type": dev.type, "torch": torch.__version__,
              "cuda": torch.version.cuda, "python": platform.python_version(), "command": sys.argv,
              "data": {"source": "synthetic" if synthetic else data.name, "n_train": len(noisy),
                       "n_test": len(data.y_test), "shape": list(data.x_train.shape[1:])},
              "base_config": base.to_dict(), "epochs": epochs, "warmup": opts["warmup"],
              "setup_seconds": time.perf_counter() - t_start, "levers": []}
    head = ["lever", "active", "warm-up s", "SSL s", "easiness s", "hal s", "ssl s", "proj. min", "test acc %",
            "vs first", "check"]
    print(_row_text(head))
    base_acc = None
    for name, what, cfg in lever_configs(base, names):
        entry = {"name": name, "what": what, "active": lever_active(name, cfg, dev),
                 "config": {k: v for k, v in cfg.to_dict().items() if k in SPEED_KEYS}}
        elapsed = time.perf_counter() - t_start
        if opts["deadline"] and elapsed > opts["deadline"]:
            entry["skipped"] = f"time budget: {elapsed:.0f} s > bench.deadline={opts['deadline']:g} s"
        else:
            log(f"bench --levers: {name} ({what}) at {elapsed:.0f} s")
            torch._dynamo.reset()  # compiled code of the last lever's model and its CUDA graphs go
            t0 = time.perf_counter()
            try:
                rep = run_bench(cfg, epochs, opts, data=data, synthetic=synthetic, noisy=noisy,
                                on_run=LEVER_CHECKS.get(name))
                entry.update(_lever_row(name, rep), check=rep.get("check"), report=rep)
                if base_acc is None and entry["test_acc"] is not None:
                    base_acc = entry["test_acc"]
                entry["delta_acc_points"] = 100 * (entry["test_acc"] - base_acc) if entry["test_acc"] is not None else None
            except Exception as e:  # the next lever still runs
                import traceback

                entry["error"] = f"{type(e).__name__}: {e}"
                log(traceback.format_exc())
            entry["wall_seconds"] = time.perf_counter() - t0
        report["levers"].append(entry)
        print(_row_text(_lever_cells(entry)), flush=True)
        report["wall_seconds"] = time.perf_counter() - t_start
        _write_json(json_path, report)
    return report


SPEED_KEYS = ("bf16", "channels_last", "cudnn_benchmark", "sgd_impl", "gmm_backend", "hal_graph", "compile",
              "compile_step", "compile_mode", "compile_backend")
_WIDTHS = (15, 6, 9, 7, 10, 7, 7, 9, 10, 8, 0)


def _row_text(cells) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, _WIDTHS)).rstrip()


def _check_text(c) -> str:
    if not c:
        return "-"
    if "max_abs_omega_diff" in c:
        return (f"max omega diff {c['max_abs_omega_diff']:.1e}, easy sets "
                f"{'same' if c['same_easy_eq1'] and c['same_easy_threshold'] else 'DIFFER'}")
    return (f"max anchor diff {c['max_abs_anchor_diff']:.1e}, parents {'same' if c['same_parents'] else 'DIFFER'}, "
            f"hard selection {'same' if c['same_clean_hard'] and c['same_corrected'] else 'DIFFERS'}")


def _lever_cells(e: dict) -> list:
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
            lines.append("| " + " | ".join(str(c) for c in _lever_cells(e)) + " |")
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


# ---------------------------------------------------------------- parallel mode
def run_parallel(params, cfg_sets, opts: dict, epochs: int, json_path, n: int) -> dict:
    """N bench processes on the same device at once; per-phase throughput summed."""
    base_cfg = bench_config(params, cfg_sets)
    stem = Path(json_path)
    work = Path(tempfile.mkdtemp(prefix="hallnll-bench-"))
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
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


# ---------------------------------------------------------------- entry point
def main(args) -> int:
    """``hallnll bench``: see the module docstring. Returns the exit status."""
    cfg_sets, opts = split_settings(getattr(args, "set", None) or [])
    if getattr(args, "peak_tflops", None) is not None:
        opts["peak_tflops"] = args.peak_tflops
    if getattr(args, "parallel", None) is not None:
        opts["parallel"] = args.parallel
    opts = _check_opts(opts)
    params = getattr(args, "params", None)
    epochs = int(getattr(args, "epochs", 3) or 3)
    json_path = getattr(args, "json", None) or "bench.json"
    from ..lock import check_output

    check_output(json_path, "file", "--json")  # before minutes of timing
    levers = getattr(args, "levers", None)
    if levers:
        names = None if levers == "all" else [x.strip() for x in levers.split(",") if x.strip()]
        lever_configs(bench_config(params, cfg_sets), names)  # check the names before anything runs
        report = run_levers(params, cfg_sets, opts, epochs, json_path, names)
        print(f"hallnll bench --levers on {report['device']} (torch {report['torch']}), {report['data']['source']} "
              f"{report['data']['n_train']} train: {len(report['levers'])} levers in {report['wall_seconds']:.0f} s")
        print(f"wrote {json_path}")
        return 0
    if opts["parallel"] > 1:
        report = run_parallel(params, cfg_sets, opts, epochs, json_path, opts["parallel"])
        print(f"hallnll bench: {report['parallel']} concurrent runs on {report['device']}, wall "
              f"{report['wall_seconds']:.1f} s (throughput summed over the runs)")
        print(format_table(report))
        _write_json(json_path, report)
        print(f"wrote {json_path}")
        return 0
    cfg = bench_config(params, cfg_sets)
    synthetic = _use_synthetic(cfg, opts, params, cfg_sets)
    dev = engine.resolve_device(cfg.device)
    if synthetic and dev.type == "cpu" and opts["n_train"] is None:
        _log("bench: on the CPU the synthetic set is 4096 train / 1024 test images; "
             "--set bench.n_train=50000 --set bench.n_test=10000 for CIFAR's size")
    from ..train import cpu_threads

    with cpu_threads(cfg.threads):  # every command runs under cfg.threads
        report = run_bench(cfg, epochs, opts, synthetic=synthetic)
    print(_header(report))
    print(format_table(report))
    _write_json(json_path, report)
    print(f"wrote {json_path}")
    return 0
