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

FLOPs (:mod:`hallnll.tools.flops`): the model's forward FLOPs per image are counted once with
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

``--levers``: :mod:`hallnll.tools.bench_levers`; ``bench.parallel``: :mod:`hallnll.tools.bench_parallel`;
FLOPs: :mod:`hallnll.tools.flops`; host syncs: :mod:`hallnll.tools.syncs`; the tables: :mod:`hallnll.tools.bench_report`.

The CLI options ``--peak-tflops`` and ``--parallel`` (when the CLI has them)
do the same as the ``bench.`` keys.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from .. import engine, levers
from ..config import Config, ConfigError, from_dict, load_config, parse_overrides
from ..data import CIFAR10_CLASSES, ImageData, load_dataset
from ..run import Run, Timer
from ..train import prepare
from .bench_parallel import barrier
from .flops import hallucinator_forward_flops, model_forward_flops
from .syncs import SyncCounter, sync_report
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


def bench_data(cfg: Config, opts: dict, synthetic: bool, dev) -> ImageData:
    """The images a bench times: synthetic CIFAR-shaped ones (``opts`` n_train / n_test, else
    CIFAR-10's sizes on CUDA and a small set elsewhere), or ``cfg``'s own dataset."""
    if not synthetic:
        return load_dataset(cfg)
    n_tr = opts["n_train"] or (50000 if dev.type == "cuda" else 4096)
    n_te = opts["n_test"] or (10000 if dev.type == "cuda" else 1024)
    return synthetic_cifar(n_tr, n_te, 100 if cfg.dataset == "cifar100" else 10, cfg.seed)


def _use_synthetic(cfg: Config, opts: dict, params, cfg_sets) -> bool:
    if opts["synthetic"] != "auto":
        return bool(opts["synthetic"])
    root_given = any(s.split("=", 1)[0].strip() == "data_root" for s in cfg_sets)
    return params is None and not root_given and cfg.dataset in ("cifar10", "cifar100")


# ---------------------------------------------------------------- counting
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


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
        data = bench_data(cfg, opts, synthetic, dev)
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
    barrier()

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
                run.timer = SyncCounter()
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
        with run.timer.phase("predict_train"), levers.cudnn_benchmark(cfg.cudnn_benchmark, dev):
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
                  "compile_active": bool(cfg.compile and levers.compile_active(dev, cfg.compile_backend)),
                  "compile_step_active": bool(cfg.compile_step and levers.compile_active(dev, cfg.compile_backend))},
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
        report["sync_check"] = sync_report(sync_counts, dev, cfg, ce_steps, n_test, hal_iters)
    if check is not None:
        report["check"] = check
    return report


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _write_json(path, obj) -> None:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, p)


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
    from .bench_report import format_table, header

    levers = getattr(args, "levers", None)
    if levers:
        names = None if levers == "all" else [x.strip() for x in levers.split(",") if x.strip()]
        from .bench_levers import lever_configs, run_levers

        lever_configs(bench_config(params, cfg_sets), names)  # check the names before anything runs
        report = run_levers(params, cfg_sets, opts, epochs, json_path, names)
        print(f"hallnll bench --levers on {report['device']} (torch {report['torch']}), {report['data']['source']} "
              f"{report['data']['n_train']} train: {len(report['levers'])} levers in {report['wall_seconds']:.0f} s")
        print(f"wrote {json_path}")
        return 0
    if opts["parallel"] > 1:
        from .bench_parallel import run_parallel

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
    print(header(report))
    print(format_table(report))
    _write_json(json_path, report)
    print(f"wrote {json_path}")
    return 0
