"""Training (§3.5, Alg. 1) end to end: :func:`fit` and its outputs.

:func:`fit` loads the data and the noisy labels (:func:`prepare`), builds a
:class:`hallnll.run.Run` (the state of the run, its epoch as the steps of
Alg. 1) and calls :meth:`Run.epoch` until ``cfg.epochs``; with ``out_dir`` it
writes ``config.yaml``, ``noise_report.txt``, ``noisy_labels.csv``,
``metrics.jsonl``, ``summary.json``, ``labels.csv`` and ``checkpoint.pt``
(every ``checkpoint_every`` epochs and at the end), from which an
interrupted run resumes exactly.

The variants of Table 5 (``cfg.variant``): ``ce`` cross-entropy on the noisy
labels throughout; ``gmm`` labeled = omega > gmm_threshold (DivideMix without
co-training, row 1); ``easy`` the class-balanced easy subset of Eq. 1 (row 2);
``hallnll`` easy U clean-hard with corrected labels (row 3, the full method).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import engine, reporting
from .config import Config
from .data import ImageData, load_dataset
from .noise import make_noisy_labels, report, save_label_csv
from .run import Run, TrainingError

__all__ = ["RunResult", "TrainingError", "prepare", "fit"]


@dataclass
class RunResult:
    summary: dict
    history: list
    out_dir: Optional[Path]
    model: torch.nn.Module
    labels: dict = field(default_factory=dict)  # given/corrected/easiness/subset/predicted tensors
    anchors: Optional[dict] = None  # last epoch's S_hal (hallnll.run.anchor_set), when an epoch ran here
    run: Optional[Run] = None  # the run in its final state: its steps work on the trained model


def prepare(cfg: Config, data: ImageData | None = None, noisy: torch.Tensor | None = None, progress=None):
    """Load the data and the noisy labels named by ``cfg`` (or take and check the given ones)."""
    if data is None:
        data = load_dataset(cfg)
    if noisy is None:
        noisy, rep = make_noisy_labels(cfg, data, progress=cfg.progress if progress is None else progress)
    else:
        noisy = torch.as_tensor(noisy, dtype=torch.int64).cpu()
        if cfg.train_subset and len(noisy) == min(cfg.train_subset, len(data.y_train)) < len(data.y_train):
            data = data.head(cfg.train_subset, cfg.test_subset)  # labels given for the subset only
        if noisy.shape != data.y_train.shape:
            raise ValueError(f"noisy labels have shape {tuple(noisy.shape)}, the training set {tuple(data.y_train.shape)}")
        if noisy.min() < 0 or noisy.max() >= data.num_classes:
            raise ValueError(f"noisy labels must lie in [0, {data.num_classes}); got {int(noisy.min())}..{int(noisy.max())}")
        rep = report(data.y_train, noisy, data.num_classes, "given", float((noisy != data.y_train).float().mean()), None)
    if (cfg.train_subset and len(noisy) > cfg.train_subset) or (cfg.test_subset and len(data.y_test) > cfg.test_subset):
        # the labels were made for the whole set; both are cut the same way
        n_all = len(noisy)
        data = data.head(cfg.train_subset, cfg.test_subset)
        noisy = noisy[:len(data.y_train)]
        if len(noisy) < n_all:
            note = f"the first {len(noisy)} of {n_all} training images" + (f"; {rep.note}" if rep.note else "")
            rep = report(data.y_train, noisy, data.num_classes, rep.kind, rep.target_rate, rep.seed, note)
    return data, noisy, rep


def _checkpoint_due(cfg: Config, epochs_done: int) -> bool:
    return bool(cfg.checkpoint_every and epochs_done % cfg.checkpoint_every == 0) or epochs_done == cfg.epochs


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
    run = Run(cfg, data, noisy, dev)
    ckpt = out / "checkpoint.pt" if out is not None else None
    if resume and ckpt is not None and ckpt.is_file():
        run.load(ckpt)
    if out is not None:
        cfg.save(out / "config.yaml")
        (out / "noise_report.txt").write_text(str(noise_report) + "\n")
        if data.train_labels_known:
            # the exact labels trained on: regenerated noise depends on float
            # reduction order (threads, GPU kernels), so keep what was used;
            # --set noise=file --set noise_file=.../noisy_labels.csv reuses it
            save_label_csv(out / "noisy_labels.csv", data.y_train, noisy)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=run.epochs_done, desc=f"{cfg.name} [{cfg.variant}]", unit="epoch")
    while run.epochs_done < cfg.epochs:
        try:
            row = run.epoch()
        except TrainingError as e:
            if ckpt is None:
                raise
            raise TrainingError(f"{e} The last good checkpoint is {ckpt}.") from None
        if ckpt is not None and _checkpoint_due(cfg, run.epochs_done):
            run.save(ckpt)
            reporting.write_metrics(out / "metrics.jsonl", run.history)
        if bar is not None:
            bar.set_postfix(acc=f"{row['test_acc']:.4f}", loss=f"{row['train_loss']:.3f}", phase=row["phase"])
            bar.update(1)
    if bar is not None:
        bar.close()

    labels = run.label_report()
    summary = reporting.summarize(run.history, time.perf_counter() - t_start, cfg)
    summary["noise_rate_actual"] = noise_report.actual_rate
    summary["torch_threads"] = torch.get_num_threads()  # the CPU share this run had (jobs.worker_threads)
    if out is not None:
        reporting.write_metrics(out / "metrics.jsonl", run.history)
        reporting.write_labels_csv(out / "labels.csv", labels["given"], labels["corrected"], labels["easiness"],
                                   labels["subset"], labels["predicted"], data.y_train if data.train_labels_known else None)
        reporting.atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return RunResult(summary, run.history, out, run.model, labels, run.last_anchors, run)
