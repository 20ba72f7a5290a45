"""``hallnll bench --levers``: the speed levers (:mod:`hallnll.levers`) timed one by one.

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
"""
from __future__ import annotations

import datetime as _dt
import platform
import sys
import time

import torch

from .. import engine, levers, selection
from ..config import Config, ConfigError
from ..run import Run
from ..train import prepare
from .bench import _device_name, _log, _sync, _use_synthetic, _write_json, bench_config, bench_data, run_bench
from .bench_report import lever_cells, row_text


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
    comp = levers.compile_active(dev, cfg.compile_backend)
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

    from ..hallucination import hallucinate
    from ..levers import StaticHalStep

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
    data = bench_data(base, opts, synthetic, dev)
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
    print(row_text(head))
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
        print(row_text(lever_cells(entry)), flush=True)
        report["wall_seconds"] = time.perf_counter() - t_start
        _write_json(json_path, report)
    return report


SPEED_KEYS = ("bf16", "channels_last", "cudnn_benchmark", "sgd_impl", "gmm_backend", "hal_graph", "compile",
              "compile_step", "compile_mode", "compile_backend")
