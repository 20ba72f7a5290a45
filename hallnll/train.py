"""The alternating training loop (§3.5, Alg. 1) and the variants of Table 5.

Per epoch t:

- t < T_warm (or variant ``ce``): cross-entropy on the given labels (Alg. 1, 2-3);
- otherwise:
  1. a large-batch pass over the training set gives logits and features;
     per-sample losses -> GMM -> easiness omega (§3.1);
  2. the labeled set:
     - ``gmm``: omega > gmm_threshold, no class balance (DivideMix without
       co-training; Table 5 row 1);
     - ``easy``: the class-balanced easy subset of Eq. 1 (row 2);
     - ``hallnll``: easy U clean-hard, where the hallucinator phase (Eq. 2,
       f and g frozen) yields S_hal and §3.3 selects and relabels the clean
       hard samples (row 3, the full method);
  3. MixMatch on labeled / unlabeled (Eq. 3, h frozen).

Variant ``ce`` trains with cross-entropy on the noisy labels throughout.

:func:`fit` runs it all and, with ``out_dir``, writes ``config.yaml``,
``metrics.jsonl``, ``summary.json``, ``labels.csv`` and ``checkpoint.pt``,
from which an interrupted run resumes.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import engine, reporting, selection
from .config import Config
from .data import DeviceImages, ImageData, load_dataset
from .hallucination import Hallucinator, hallucinate
from .models import build_model
from .noise import save_label_csv
from .ssl import ssl_epoch


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message names epoch and phase."""


@dataclass
class RunResult:
    summary: dict
    history: list
    out_dir: Optional[Path]
    model: torch.nn.Module
    labels: dict = field(default_factory=dict)  # given/corrected/easiness/subset/predicted tensors
    anchors: Optional[dict] = None  # last epoch's S_hal: anchors, labels, parents (positions in easy set), easy_index


class _Timer:
    def __init__(self, device):
        self.device, self.t, self.seconds = device, time.perf_counter(), {}

    def lap(self, name):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.t
        self.t = now


def _check_finite(value: float, epoch: int, phase: str, out_dir) -> None:
    if not math.isfinite(value):
        where = f"; the last good checkpoint is {out_dir / 'checkpoint.pt'}" if out_dir else ""
        raise TrainingError(f"loss is {value} at epoch {epoch} in phase {phase!r}: stopping{where}. "
                            f"Try a lower lr or bf16=false.")


def prepare(cfg: Config, data: ImageData | None = None, noisy: torch.Tensor | None = None, progress=None):
    """Load the data and the noisy labels named by ``cfg`` (or take the given ones)."""
    from .noise import make_noisy_labels, report

    if data is None:
        data = load_dataset(cfg)
    if noisy is None:
        noisy, rep = make_noisy_labels(cfg, data, progress=cfg.progress if progress is None else progress)
    else:
        noisy = torch.as_tensor(noisy, dtype=torch.int64).cpu()
        if noisy.shape != data.y_train.shape:
            raise ValueError(f"noisy labels have shape {tuple(noisy.shape)}, the training set {tuple(data.y_train.shape)}")
        if noisy.min() < 0 or noisy.max() >= data.num_classes:
            raise ValueError(f"noisy labels must lie in [0, {data.num_classes}); got {int(noisy.min())}..{int(noisy.max())}")
        rep = report(data.y_train, noisy, data.num_classes, "given", float((noisy != data.y_train).float().mean()), None)
    return data, noisy, rep


def make_hallucinator(cfg: Config, dim: int, device) -> tuple:
    """h_phi and its optimiser (SGD with the model's momentum and weight decay; lr hal_lr or lr)."""
    hal = Hallucinator(dim, cfg.hal_hidden, cfg.hal_out_relu).to(device)
    return hal, engine.make_optimizer(hal.parameters(), cfg.hal_lr or cfg.lr, cfg.momentum, cfg.weight_decay)


@dataclass
class Setup:
    """Everything a training run holds on the device, built once by :func:`setup`."""

    device: torch.device
    num_classes: int
    train_x: DeviceImages
    test_x: DeviceImages
    given: torch.Tensor
    true: Optional[torch.Tensor]
    y_test: torch.Tensor
    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, compiled when cfg.compile on CUDA
    hal: Hallucinator
    opt: torch.optim.Optimizer
    hal_opt: torch.optim.Optimizer
    gen: torch.Generator
    rng: np.random.Generator


def setup(cfg: Config, data: ImageData, noisy: torch.Tensor, dev=None) -> Setup:
    """Images on the device, the seeded model and hallucinator, optimisers and generators."""
    dev = engine.resolve_device(cfg.device) if dev is None else torch.device(dev)
    cl = cfg.channels_last and dev.type == "cuda"
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.arch, data.num_classes, data.in_channels, cfg.pretrained).to(dev)
        hal, hal_opt = make_hallucinator(cfg, model.feature_dim, dev)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    return Setup(
        device=dev, num_classes=data.num_classes,
        train_x=DeviceImages(data.x_train, data.mean, data.std, dev, cl),
        test_x=DeviceImages(data.x_test, data.mean, data.std, dev, cl),
        given=noisy.to(dev), true=data.y_train.to(dev) if data.train_labels_known else None,
        y_test=data.y_test.to(dev), model=model,
        train_model=torch.compile(model) if (cfg.compile and dev.type == "cuda") else model,
        hal=hal, opt=engine.make_optimizer(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay),
        hal_opt=hal_opt, gen=torch.Generator(dev).manual_seed(cfg.seed), rng=np.random.default_rng(cfg.seed))


def fit(cfg: Config, out_dir=None, data: ImageData | None = None, noisy: torch.Tensor | None = None,
        resume: bool = True, progress: bool | None = None) -> RunResult:
    """Train ``cfg.variant`` on ``cfg``'s data and noisy labels (Alg. 1). See the module docstring."""
    cfg.validate()
    progress = cfg.progress if progress is None else progress
    t_start = time.perf_counter()
    dev = engine.resolve_device(cfg.device)
    data, noisy, noise_report = prepare(cfg, data, noisy, progress)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    st = setup(cfg, data, noisy, dev)
    C, train_x, test_x, given, true, y_test = st.num_classes, st.train_x, st.test_x, st.given, st.true, st.y_test
    model, train_model, hal, opt, hal_opt, gen, rng = st.model, st.train_model, st.hal, st.opt, st.hal_opt, st.gen, st.rng
    hal_lr = cfg.hal_lr or cfg.lr

    history: list = []
    start_epoch = 0
    state_last: dict = {}
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=dev, weights_only=False)
        if not torch.equal(ck["noisy"].cpu(), noisy):
            raise TrainingError(f"{ckpt_path} was made with other noisy labels; use another --out or delete it")
        model.load_state_dict(ck["model"]), opt.load_state_dict(ck["opt"])
        hal.load_state_dict(ck["hal"]), hal_opt.load_state_dict(ck["hal_opt"])
        gen.set_state(ck["gen"].cpu())
        rng.bit_generator.state = ck["rng"]
        history, start_epoch, state_last = ck["history"], ck["epoch"], ck.get("last", {})
    if out is not None:
        cfg.save(out / "config.yaml")
        (out / "noise_report.txt").write_text(str(noise_report) + "\n")
        if data.train_labels_known:
            # the exact labels trained on: regenerated noise depends on float
            # reduction order (threads, GPU kernels), so keep what was used;
            # --set noise=file --set noise_file=.../noisy_labels.csv reuses it
            save_label_csv(out / "noisy_labels.csv", data.y_train, noisy)

    def checkpoint(epoch_done: int):
        if ckpt_path is None:
            return
        reporting.atomic_torch_save({
            "model": model.state_dict(), "opt": opt.state_dict(), "hal": hal.state_dict(),
            "hal_opt": hal_opt.state_dict(), "gen": gen.get_state(), "rng": rng.bit_generator.state,
            "history": history, "epoch": epoch_done, "noisy": noisy, "last": state_last,
            "config": cfg.to_dict()}, ckpt_path)
        reporting.write_metrics(out / "metrics.jsonl", history)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=start_epoch, desc=f"{cfg.name} [{cfg.variant}]", unit="epoch")
    last_anchors = None
    for epoch in range(start_epoch, cfg.epochs):
        timer = _Timer(dev)
        lr = engine.step_lr(cfg.lr, epoch, cfg.lr_decay_epoch)
        engine.set_lr(opt, lr)
        engine.set_lr(hal_opt, engine.step_lr(hal_lr, epoch, cfg.lr_decay_epoch))
        row: dict = {"epoch": epoch + 1, "lr": lr}
        if cfg.variant == "ce" or epoch < cfg.warmup_epochs:
            row["phase"] = "warmup" if cfg.variant != "ce" else "ce"
            loss = engine.ce_epoch(train_model, train_x, given, opt, cfg.batch_size, gen, cfg.crop_padding, cfg.hflip, cfg.bf16)
            timer.lap("warmup")
            row["train_loss"] = float(loss)
            _check_finite(row["train_loss"], epoch + 1, row["phase"], out)
        else:
            row["phase"] = "ssl"
            sel = select_epoch(model, hal, hal_opt, train_x, given, C, cfg, gen, timer)
            last_anchors = sel.pop("anchors", None)
            ls = sel["labeled_mask"]
            lab_idx = ls.nonzero().squeeze(1)
            unl_idx = (~ls).nonzero().squeeze(1)
            iters = engine.num_iters(len(lab_idx), cfg.batch_size)
            losses = ssl_epoch(train_model, opt, train_x, lab_idx, sel["train_labels"][lab_idx], sel["weights"][lab_idx],
                               unl_idx, C, cfg, epoch, gen, rng, iters)
            timer.lap("ssl")
            row.update({k: float(v) for k, v in losses.items()})
            row["train_loss"] = row.pop("loss")
            if "hal_loss" in sel:
                row["hal_loss"] = float(sel["hal_loss"])
                row["hal_closeness"] = float(sel["hal_closeness"])
                row["hal_ce"] = float(sel["hal_ce"])
                _check_finite(row["hal_loss"], epoch + 1, "hallucination", out)
            _check_finite(row["train_loss"], epoch + 1, "ssl", out)
            row.update(reporting.selection_metrics(true, given, ls, sel["easy_mask"], sel["clean_hard_mask"], sel["train_labels"]))
            state_last = {k: sel[k].cpu() for k in ("omega", "easy_mask", "clean_hard_mask", "train_labels")}
        row["test_acc"] = float(engine.accuracy(model, test_x, y_test, cfg.eval_batch_size, cfg.bf16))
        timer.lap("eval")
        row["seconds"] = {**timer.seconds, "total": sum(timer.seconds.values())}
        history.append(row)
        if cfg.checkpoint_every and ((epoch + 1) % cfg.checkpoint_every == 0) or epoch + 1 == cfg.epochs:
            checkpoint(epoch + 1)
        if bar is not None:
            bar.set_postfix(acc=f"{row['test_acc']:.4f}", loss=f"{row['train_loss']:.3f}", phase=row["phase"])
            bar.update(1)
    if bar is not None:
        bar.close()

    labels = label_report(model, train_x, given, C, cfg, state_last)
    summary = reporting.summarize(history, time.perf_counter() - t_start, cfg)
    summary["noise_rate_actual"] = noise_report.actual_rate
    if out is not None:
        reporting.write_metrics(out / "metrics.jsonl", history)
        reporting.write_labels_csv(out / "labels.csv", labels["given"], labels["corrected"], labels["easiness"],
                                   labels["subset"], labels["predicted"], data.y_train if data.train_labels_known else None)
        reporting.atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return RunResult(summary, history, out, model, labels, last_anchors)


def select_epoch(model, hal, hal_opt, train_x: DeviceImages, given: torch.Tensor, C: int, cfg: Config, gen, timer) -> dict:
    """Steps 1-3 of an SSL epoch: easiness, labeled set, (hallucination and hard selection).

    Returns masks over the training set, the labels and refinement weights the
    SSL step uses, and for ``hallnll`` the hallucination losses and S_hal.
    """
    logits, feats = engine.predict(model, train_x, cfg.eval_batch_size, cfg.bf16)
    omega = selection.easiness(selection.per_sample_loss(logits, given), cfg.gmm_max_iter, cfg.seed)
    n = len(given)
    out = {"omega": omega}
    train_labels = given.clone()
    weights = omega.clone()
    clean_hard = torch.zeros(n, dtype=torch.bool, device=given.device)
    if cfg.variant == "gmm" or cfg.easy_selection == "gmm":
        easy = selection.select_gmm(omega, cfg.gmm_threshold)
    else:
        easy = selection.select_easy(omega, given, C, cfg.p)
    timer.lap("select")
    if cfg.variant == "hallnll":
        easy_idx = easy.nonzero().squeeze(1)
        hard_idx = (~easy).nonzero().squeeze(1)
        iters = cfg.hal_iters or engine.num_iters(n, cfg.hal_batch_size or cfg.batch_size)
        res = hallucinate(hal, hal_opt, model.classifier, feats[easy_idx], given[easy_idx], C, iters,
                          cfg.hal_batch_size or cfg.batch_size, cfg.lambda_p, gen)
        timer.lap("hallucinate")
        if len(hard_idx):
            hs = selection.select_hard(res.anchors, res.labels, feats[hard_idx], C, cfg.lambda_conf, cfg.k)
            ch = hard_idx[hs.clean]
            clean_hard[ch] = True
            train_labels[ch] = hs.corrected[hs.clean]
            w = hs.confidence[hs.clean] if cfg.clean_hard_weight < 0 else torch.full_like(hs.confidence[hs.clean], cfg.clean_hard_weight)
            weights[ch] = w
        timer.lap("hard_select")
        out.update(hal_loss=res.loss, hal_closeness=res.closeness, hal_ce=res.ce,
                   anchors={"anchors": res.anchors, "labels": res.labels, "parents": res.parents, "easy_index": easy_idx})
    out.update(easy_mask=easy, clean_hard_mask=clean_hard, labeled_mask=easy | clean_hard,
               train_labels=train_labels, weights=weights)
    return out


@torch.no_grad()
def label_report(model, train_x: DeviceImages, given: torch.Tensor, C: int, cfg: Config, last: dict) -> dict:
    """Per-sample report of the final state: easiness, subset, corrected and predicted labels.

    Uses the last SSL epoch's selection; when there was none (variant ``ce``,
    or a run that ended in warm-up) one easiness pass is made with the GMM
    threshold as the clean/noisy split.
    """
    logits, _ = engine.predict(model, train_x, cfg.eval_batch_size, cfg.bf16, features=False)
    predicted = logits.argmax(1).cpu()
    if last:
        easy, ch = last["easy_mask"], last["clean_hard_mask"]
        lab = easy | ch
        omega, train_labels = last["omega"], last["train_labels"]
    else:
        omega = selection.easiness(selection.per_sample_loss(logits, given), cfg.gmm_max_iter, cfg.seed).cpu()
        easy = omega > cfg.gmm_threshold
        ch = torch.zeros_like(easy)
        lab, train_labels = easy, given.cpu()
    subset = torch.full((len(given),), 2, dtype=torch.int64)
    subset[easy] = 0
    subset[ch] = 1
    corrected = torch.where(lab, train_labels, predicted)
    return {"given": given.cpu(), "corrected": corrected, "easiness": omega.cpu(), "subset": subset, "predicted": predicted}
