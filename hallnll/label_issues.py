"""The label-issue report: which given labels are wrong, and what they should be.

In cleanlab's vocabulary, one row per image (training and test):

=================  =============================================================
column             meaning
=================  =============================================================
``path``           the image as written in its CSV (a folder), else ``index``
``split``          ``train`` or ``test``
``given_label``    the label of the CSV / array, as a class name
``suggested_label``  the label to use: the model's prediction where
                   ``is_label_issue``, else the given label
``is_label_issue`` the given label is judged wrong (rule below)
``label_quality``  in [0, 1], the model's probability of the given label
                   (cleanlab's self-confidence); sort ascending to review
``subset``         what the method made of the image in training: ``easy``,
                   ``clean-hard`` or ``unlabeled`` (§3.1, §3.3); ``test``
``true_label``     only where the clean labels are known (benchmarks)
=================  =============================================================

Out of sample (``cfg.label_folds`` = k >= 2): the training images are dealt
into k folds, stratified by given label; the method runs k times
(:func:`hallnll.train.fit`), each time on the other k - 1 folds, and the
images of the left-out fold get the probabilities of that run's model,
which never saw their given labels. The test images get the mean of the k
models' probabilities. With k = 2 this costs one run on all images (two
runs on half); ``label_folds = 0`` uses the final model of one run on all
images instead, which trained on the given labels of its easy samples.

The rule (:func:`prune_by_noise_rate`) is confident learning's "prune by
noise rate" (Northcutt et al. 2021), written from the paper: the number of
issues per (given, true) class pair is estimated from the probabilities
themselves, and that many images with the largest margins are flagged. A
label is only changed where the model that never saw it gives its own class
at least ``suggest_confidence``. :func:`issue_columns` turns its result into
the report's columns, for the method's probabilities and anyone else's.

:func:`issues_from_probs` is the table from one's own model's out-of-sample
probabilities; :func:`find_label_issues` does all of it on arrays (the
cleanlab habit); :func:`report` on a dataset and a config (what ``hallnll
fit-folder`` calls).
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import engine, levers, reporting
from .config import Config, ConfigError
from .data import DataError, ImageData
from .data.stream import device_images

COLUMNS = ("split", "given_label", "suggested_label", "is_label_issue", "label_quality", "subset")


# ---------------------------------------------------------------- the rule
def prune_by_noise_rate(probs: np.ndarray, given: np.ndarray, suggest_confidence: float = 0.9,
                        joint: Optional[np.ndarray] = None) -> dict:
    """Label issues from out-of-sample class probabilities ``probs`` [N, C] and the
    given labels [N] (confident learning, Northcutt et al. 2021, written from the
    paper):

    1. per-class thresholds t_j: the mean probability of class j over the images
       labelled j;
    2. the confident joint: an image labelled i counts for class j when j is its
       most likely class among those at or above their threshold;
    3. calibrated to the class sizes, its off-diagonal (i, j) is the estimated
       number of images labelled i that belong to j ("prune by noise rate"): that
       many images labelled i, those with the largest p_j - p_i, are issues.

    ``label_quality`` is p_i, the probability of the given label. The suggested
    label is the most likely other class j where an image is an issue and the
    model gives j at least ``suggest_confidence``, else the given label: on the
    development data (``benchmarks/label_issues_dev.py``) a lower bar made the
    suggested labels less accurate than the given ones. ``joint`` replaces the estimated
    counts (the test rows use the training images'). Returns numpy arrays
    ``is_label_issue``, ``label_quality``, ``suggested`` and the ``joint``."""
    probs = np.asarray(probs, dtype=np.float64)
    given = np.asarray(given, dtype=np.int64)
    n, c = probs.shape
    rows = np.arange(n)
    quality = probs[rows, given] if n else np.zeros(0)
    other = probs.copy()
    other[rows, given] = -1.0
    alt = other.argmax(1) if n else np.zeros(0, np.int64)
    if joint is None:
        joint = calibrated_joint(probs, given)
    issue = np.zeros(n, dtype=bool)
    if joint.sum() > 0 and n:
        scale = n / joint.sum()  # a joint of another set of images, in proportion
        for i in range(c):
            idx = np.flatnonzero(given == i)
            budget = len(idx) - 1  # never the whole class
            for j in range(c):
                k = int(round(joint[i, j] * scale)) if i != j else 0
                k = min(k, budget)
                if k <= 0 or not len(idx):
                    continue
                margin = probs[idx, j] - probs[idx, i]
                issue[idx[np.argsort(-margin, kind="stable")[:k]]] = True
    change = issue & (probs[rows, alt] >= suggest_confidence) if n else issue
    suggested = np.where(change, alt, given)
    return {"is_label_issue": issue, "label_quality": quality, "suggested": suggested, "joint": joint}


def calibrated_joint(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Steps 1-3 of :func:`prune_by_noise_rate`: the confident joint [C, C] with each
    row rescaled to the number of images given that label (counts, not rates)."""
    n, c = probs.shape
    counts = np.bincount(given, minlength=c).astype(np.float64)
    sums = np.zeros(c)
    np.add.at(sums, given, probs[np.arange(n), given])
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
    above = probs >= thresholds[None]
    confident = np.where(above, probs, -1.0).argmax(1)
    has = above.any(1)
    joint = np.zeros((c, c))
    np.add.at(joint, (given[has], confident[has]), 1.0)
    rows = joint.sum(1, keepdims=True)
    return np.where(rows > 0, joint / np.maximum(rows, 1e-12) * counts[:, None], 0.0)


ISSUE_COLUMNS = ("given_label", "suggested_label", "is_label_issue", "label_quality")


def issue_columns(labels: np.ndarray, pred_probs: np.ndarray, classes, suggest_confidence: float = 0.9) -> dict:
    """The report's columns ``ISSUE_COLUMNS`` (lists, one entry per image) of
    :func:`prune_by_noise_rate` on ``pred_probs`` [N, C] and the given
    ``labels`` [N], labels named by ``classes``. Unchecked: see
    :func:`issues_from_probs` for the checked entry point."""
    names = np.asarray(list(classes), dtype=object)
    labels = np.asarray(labels, dtype=np.int64)
    r = prune_by_noise_rate(pred_probs, labels, suggest_confidence)
    return {"given_label": list(names[labels]), "suggested_label": list(names[r["suggested"]]),
            "is_label_issue": [bool(v) for v in r["is_label_issue"]],
            "label_quality": [float(v) for v in r["label_quality"]]}


def issues_from_probs(labels, pred_probs, *, classes=None, suggest_confidence: float = 0.9):
    """Label issues from one's own model: a pandas DataFrame, one row per image
    (``given_label``, ``suggested_label``, ``is_label_issue``,
    ``label_quality``), by the rule of the method's report
    (:func:`prune_by_noise_rate`).

    ``labels``: the given labels, integers 0..C-1 [N]; ``pred_probs``: [N, C]
    out-of-sample class probabilities (each image's from a model that did not
    train on its label, e.g. cross-validation; rows sum to 1), cleanlab's
    arguments; ``classes`` names the C classes (default ``"0"``..).
    ``suggest_confidence``: a flagged label is changed only where the model
    gives its most likely other class at least this probability. Raises
    :class:`hallnll.DataError` with what to do when the input does not fit.
    """
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the notebooks/dev extras
        raise ImportError("issues_from_probs returns a pandas DataFrame: pip install pandas") from None
    probs = np.asarray(pred_probs)
    y = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise DataError(f"pred_probs: expected an array [N, C] of class probabilities (N >= 1 images, C >= 2 "
                        f"classes), got shape {probs.shape}")
    n, c = probs.shape
    if not np.issubdtype(probs.dtype, np.number) or not np.isfinite(probs).all():
        raise DataError("pred_probs: expected finite numbers; give softmax probabilities, not NaN or inf")
    probs = probs.astype(np.float64)
    if probs.min() < 0 or probs.max() > 1 or not np.allclose(probs.sum(1), 1.0, atol=1e-3):
        worst = int(np.abs(probs.sum(1) - 1.0).argmax())
        raise DataError(f"pred_probs: each row must be probabilities summing to 1 (row {worst} sums to "
                        f"{probs[worst].sum():.4g}, values in {probs.min():.4g}..{probs.max():.4g}); "
                        f"pass softmax(logits), not the logits")
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"labels: expected one label per row of pred_probs ({n}), got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise DataError(f"labels: expected integers 0..{c - 1} (class indices, the columns of pred_probs), got "
                        f"{y.dtype}; map class names to indices first")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= c:
        raise DataError(f"labels: expected integers 0..{c - 1} (the {c} columns of pred_probs), got "
                        f"{y.min()}..{y.max()}")
    classes = [str(i) for i in range(c)] if classes is None else [str(v) for v in classes]
    if len(classes) != c:
        raise DataError(f"classes: {len(classes)} names for the {c} columns of pred_probs; give one name per column")
    if not 0.0 <= float(suggest_confidence) <= 1.0:
        raise DataError(f"suggest_confidence: expected a probability in [0, 1], got {suggest_confidence}")
    return pd.DataFrame(issue_columns(y, probs, classes, float(suggest_confidence)))


# ---------------------------------------------------------------- out-of-sample probabilities
def fold_index(given: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Fold 0..k-1 of every training image: within each given class a seeded
    shuffle dealt round-robin (so each fold keeps the class proportions)."""
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(given), generator=g)
    order = perm[torch.argsort(given[perm], stable=True)]
    counts = torch.bincount(given, minlength=int(given.max()) + 1 if len(given) else 1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(given)) - starts[given[order]]
    folds = torch.empty(len(given), dtype=torch.int64)
    folds[order] = rank % k
    return folds


def _subset_data(data: ImageData, idx: torch.Tensor, name: str) -> ImageData:
    paths = [data.train_paths[i] for i in idx.tolist()] if data.train_paths else []
    norm = {"mean": data.mean, "std": data.std} if data.streamed else {}  # streamed: nothing decoded to average
    return ImageData(name, data.x_train[idx], data.y_train[idx], data.x_test, data.y_test, classes=list(data.classes),
                     train_labels_known=data.train_labels_known, train_paths=paths, test_paths=list(data.test_paths),
                     **norm)


@torch.no_grad()
def _probs(model, x: torch.Tensor, data: ImageData, cfg: Config, device) -> np.ndarray:
    if len(x) == 0:
        return np.zeros((0, data.num_classes), np.float32)
    bf16 = levers.use_bf16(cfg, device)  # as the Run that trained the model
    images = device_images(x, data.mean, data.std, device, cfg.channels_last and (device.type == "cuda" or bf16), cfg)
    logits, _ = engine.predict(model, images, cfg.eval_batch_size, bf16, features=False)
    return torch.softmax(logits.float(), 1).cpu().numpy()


def _run_dirs(cfg: Config, out: Path) -> list:
    return [out / f"fold{j}" for j in range(cfg.label_folds)] if cfg.label_folds else [out / "run"]


def _run_config(cfg: Config, j: int) -> Config:
    return cfg.replace(name=f"{cfg.name}-fold{j}") if cfg.label_folds else cfg


@dataclass
class OutOfSample:
    """Probabilities of the training images from models that did not train on
    their labels (:func:`out_of_sample`), of the test images (mean of the
    models), the subset code of each training image, and the runs' summaries."""

    probs: np.ndarray  # [N, C]
    test_probs: np.ndarray  # [M, C]
    subset: np.ndarray  # [N] 0 easy, 1 clean-hard, 2 unlabeled (in the run that trained on it)
    folds: np.ndarray  # [N] fold of each image (all 0 when label_folds = 0)
    summaries: list = field(default_factory=list)


def out_of_sample(cfg: Config, data: ImageData, noisy: torch.Tensor, out_dir=None, resume: bool = True,
                  progress: bool | None = None) -> OutOfSample:
    """Run the method ``cfg.label_folds`` times (or once, for 0) and collect the
    probabilities the report is made from; each run is a run folder
    ``out_dir/fold<j>`` (``out_dir/run`` for 0), resumable on its own."""
    from .train import cpu_threads, fit

    k = cfg.label_folds
    n, c = len(noisy), data.num_classes
    dev = engine.resolve_device(cfg.device)
    out = Path(out_dir) if out_dir is not None else None
    probs = np.zeros((n, c), np.float32)
    test_probs = np.zeros((len(data.y_test), c), np.float64)
    subset_votes = np.zeros((n, 3), np.int64)
    summaries = []
    folds = fold_index(noisy, k, cfg.seed) if k else torch.zeros(n, dtype=torch.int64)
    for j in range(max(k, 1)):
        train_idx = (folds != j).nonzero().squeeze(1) if k else torch.arange(n)
        held = (folds == j).nonzero().squeeze(1) if k else torch.arange(n)
        sub = _subset_data(data, train_idx, f"{data.name}:fold{j}" if k else data.name)
        run_dir = _run_dirs(cfg, out)[j] if out is not None else None
        res = fit(_run_config(cfg, j), run_dir, data=sub, noisy=noisy[train_idx], resume=resume, progress=progress)
        with cpu_threads(cfg.threads):
            probs[held.numpy()] = _probs(res.model, data.x_train[held], sub, cfg, dev)
            test_probs += _probs(res.model, data.x_test, sub, cfg, dev)
        codes = res.labels["subset"].numpy()
        subset_votes[train_idx.numpy(), codes] += 1
        summaries.append(res.summary)
        del res
    subset = subset_votes.argmax(1)  # the most frequent subset of the image over the runs that trained on it
    return OutOfSample(probs, (test_probs / max(k, 1)).astype(np.float32), subset, folds.numpy(), summaries)


# ---------------------------------------------------------------- the report
def build(data: ImageData, noisy: torch.Tensor, oos: OutOfSample, suggest_confidence: float = 0.9) -> dict:
    """The report's columns (a dict of equal-length lists, training rows first)."""
    names = np.asarray(data.classes, dtype=object)
    given = noisy.numpy()
    tr = issue_columns(given, oos.probs, data.classes, suggest_confidence)
    te = issue_columns(data.y_test.numpy(), oos.test_probs, data.classes, suggest_confidence)  # the test CSV's own
    n, m = len(given), len(data.y_test)
    cols: dict = {}
    if data.train_paths:
        cols["path"] = list(data.train_paths) + list(data.test_paths)
    else:
        cols["index"] = list(range(n)) + list(range(m))
    cols["split"] = ["train"] * n + ["test"] * m
    cols.update({k: tr[k] + te[k] for k in tr})
    cols["subset"] = [reporting.SUBSETS[s] for s in oos.subset] + ["test"] * m
    if data.train_labels_known:
        cols["true_label"] = list(names[data.y_train.numpy()]) + list(names[data.y_test.numpy()])
    return cols


def write_csv(path, cols: dict) -> None:
    """``label_issues.csv`` (atomic), label_quality with 4 decimals."""
    keys = list(cols)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for row in zip(*(cols[k] for k in keys)):
        w.writerow([f"{v:.4f}" if isinstance(v, float) else v for v in row])
    reporting.atomic_write_text(path, buf.getvalue())


def scores(cols: dict, split: str = "train") -> dict:
    """Precision and recall of ``is_label_issue`` and the accuracy of the given and
    suggested labels against ``true_label`` (benchmarks; needs the truth)."""
    rows = [i for i, s in enumerate(cols["split"]) if s == split]
    true = np.array([cols["true_label"][i] for i in rows], dtype=object)
    given = np.array([cols["given_label"][i] for i in rows], dtype=object)
    sugg = np.array([cols["suggested_label"][i] for i in rows], dtype=object)
    flag = np.array([cols["is_label_issue"][i] for i in rows], dtype=bool)
    return issue_scores(flag, given != true, given == true, sugg == true)


def issue_scores(flag: np.ndarray, wrong: np.ndarray, given_right: np.ndarray, suggested_right: np.ndarray) -> dict:
    tp = int((flag & wrong).sum())
    return {"n": int(len(flag)), "noise_rate": float(wrong.mean()) if len(flag) else None,
            "n_flagged": int(flag.sum()), "precision": tp / max(int(flag.sum()), 1),
            "recall": tp / max(int(wrong.sum()), 1), "given_acc": float(given_right.mean()) if len(flag) else None,
            "suggested_acc": float(suggested_right.mean()) if len(flag) else None}


def report(cfg: Config, out_dir=None, data: ImageData | None = None, noisy: torch.Tensor | None = None,
           resume: bool = True, progress: bool | None = None) -> tuple:
    """The label-issue report of ``cfg``'s data: ``(columns, summary)``; with
    ``out_dir`` it writes ``label_issues.csv``, ``summary.json`` and
    ``config.yaml`` there and the runs under it (:func:`out_of_sample`)."""
    import contextlib

    from .lock import folder_lock

    cfg.validate()
    held = folder_lock(out_dir) if out_dir is not None else contextlib.nullcontext()
    with held:  # one report per folder at a time; each run folder under it has its own lock too
        return _report(cfg, out_dir, data, noisy, resume, progress)


#: what :func:`report` writes at the top of its folder, removed first when it starts over (the runs' folders last)
REPORT_OUTPUTS = ("label_issues.csv", "summary.json", "config.yaml")


def check_folds(data: ImageData, noisy: torch.Tensor, k: int) -> None:
    """Refuse labels the folds cannot judge: each of the k runs must see every class, so each
    class needs at least k images (a class with fewer is judged, in some fold, by a model that
    never saw it)."""
    counts = torch.bincount(noisy, minlength=data.num_classes).tolist()
    few = [(c, n) for c, n in zip(data.classes, counts) if n < max(k, 1)]
    if k >= 2 and few:
        listing = ", ".join(f"{c!r}: {n}" for c, n in few[:10]) + (", ..." if len(few) > 10 else "")
        smallest = min(n for _, n in few)
        fix = f"set label_folds={smallest} or less, " if smallest >= 2 else ""
        raise DataError(f"label_folds={k}: {len(few)} class(es) have fewer than {k} images ({listing}), so a fold "
                        f"would judge them with a model that never saw the class; add images, drop the class, "
                        f"{fix}or set label_folds=0 (one run on all images, in sample)")


def _report(cfg: Config, out_dir, data, noisy, resume: bool, progress) -> tuple:
    from .train import check_resumable, prepare, read_checkpoint

    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is not None:  # the runs' checkpoints are checked before the data and noise are prepared
        for j, run_dir in enumerate(_run_dirs(cfg, out)):
            if (run_dir / "checkpoint.pt").is_file():
                state = read_checkpoint(run_dir / "checkpoint.pt")
                check_resumable(_run_config(cfg, j), state, run_dir / "checkpoint.pt")
    data, noisy, _ = prepare(cfg, data, noisy, progress=cfg.progress if progress is None else progress)
    check_folds(data, noisy, cfg.label_folds)
    if out is not None and not resume:  # the old report goes just before the new runs write
        runs = {d.name for d in _run_dirs(cfg, out)} | {d.name for d in out.glob("fold*") if d.name[4:].isdigit()}
        reporting.remove_outputs(out, list(REPORT_OUTPUTS) + sorted(runs) + ["run"])
    oos = out_of_sample(cfg, data, noisy, out, resume, progress)
    cols = build(data, noisy, oos, cfg.suggest_confidence)
    n = len(noisy)
    flagged = sum(cols["is_label_issue"][:n])
    summary = {"name": cfg.name, "dataset": cfg.dataset, "noise": cfg.noise, "label_folds": cfg.label_folds,
               "n_train": n, "n_test": len(data.y_test), "classes": list(data.classes),
               "n_label_issues": int(flagged), "label_issue_share": flagged / max(n, 1),
               "n_label_issues_test": int(sum(cols["is_label_issue"][n:])),
               "test_acc": (float((oos.test_probs.argmax(1) == data.y_test.numpy()).mean())
                            if len(data.y_test) else None),
               "wall_seconds": sum(s["wall_seconds"] for s in oos.summaries) + (time.perf_counter() - t0)
               - sum(s["wall_seconds_this_session"] for s in oos.summaries),
               "runs": oos.summaries}
    if data.train_labels_known:
        summary["scores"] = scores(cols)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
        write_csv(out / "label_issues.csv", cols)
        reporting.atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return cols, summary


# ---------------------------------------------------------------- the settings of a report
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 units that oneDNN may use (where ``cpu_bf16`` was measured
    faster): not where ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below AMX (e.g. ``AVX2``: bf16 is then
    emulated, 10x slower: ``find_label_issues`` on digits took 39 s instead of 3.5 s)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if cap not in ("", "ALL", "DEFAULT") and "AMX" not in cap:
        return False
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def issue_config(sets=(), n_images: int = 0, native_side: int | None = None, params=None, **changes) -> Config:
    """The settings of a label-issue report, for ``hallnll fit-folder`` and :func:`find_label_issues`
    alike: ``params`` (default: the shipped ``folder`` profile where the device is a GPU,
    ``folder-cpu`` on a CPU) with the ``--set`` items ``sets`` and the keyword ``changes``; then,
    for what neither sets: on a CPU with AMX units bf16 autocast (``cpu_bf16``), a batch size
    that gives each run at least 10 steps per epoch on ``n_images`` (halved down to 16), and an
    image size no larger than the images' ``native_side`` (a multiple of 4, the crop padding an
    eighth of it)."""
    from .config import load_config

    sets = list(sets)
    given = {s.split("=", 1)[0].strip() for s in sets} | set(changes)
    if params is None:
        dev = engine.resolve_device(load_config("folder", sets, **changes).device)
        params = "folder" if dev.type == "cuda" else "folder-cpu"
    cfg = load_config(params, sets, **changes)
    out = {}
    if "cpu_bf16" not in given and engine.resolve_device(cfg.device).type == "cpu" and cpu_has_amx():
        out["cpu_bf16"] = True  # bf16 autocast on AMX units: 2.3x (docs/choices.md#cpu-bf16)
    if "batch_size" not in given:
        # a small set still gets at least 10 optimiser steps per epoch in each run
        per_run = n_images * (cfg.label_folds - 1) // cfg.label_folds if cfg.label_folds else n_images
        bs = cfg.batch_size
        while bs > 16 and per_run < 10 * bs:
            bs //= 2
        if bs != cfg.batch_size:
            out["batch_size"] = bs
    if "image_size" not in given and native_side is not None:
        native = native_side // 4 * 4
        if 4 <= native < cfg.image_size:
            out["image_size"] = native
            if "crop_padding" not in given:
                out["crop_padding"] = max(1, native // 8)
    return cfg.replace(**out) if out else cfg


# ---------------------------------------------------------------- arrays (the cleanlab habit)
def _as_nchw(images, what: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8:
        raise DataError(f"{what}: expected uint8 pixels 0..255, got {x.dtype}; convert with "
                        f"(x * 255).round().astype(np.uint8) if they are floats in [0, 1]")
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4:
        raise DataError(f"{what}: expected images [N, H, W], [N, H, W, C] or [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise DataError(f"{what}: images of shape {tuple(x.shape)} have neither 1 nor 3 channels")
    return x.contiguous()


def find_label_issues(images, labels, *, classes=None, test_images=None, test_labels=None, params=None,
                      overrides=None, out_dir=None, progress: bool = False, **settings):
    """Label issues of ``images`` (uint8 ``[N, H, W(, C)]`` or ``[N, C, H, W]``) with
    given ``labels`` (ints 0..C-1): a pandas DataFrame with one row per image
    (``index``, ``split``, ``given_label``, ``suggested_label``,
    ``is_label_issue``, ``label_quality``, ``subset``), test images after the
    training ones. ``classes`` names the labels (default ``"0"``..).

    The settings are :func:`issue_config`'s, as for ``hallnll fit-folder``: ``params``
    (default: the shipped ``folder`` profile on a GPU, ``folder-cpu`` on a CPU) with
    ``overrides`` (``["epochs=20"]``) and keyword settings (``epochs=20``), the batch size
    fitted to the number of images. ``out_dir`` keeps the runs (resumable).
    """
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the notebooks/dev extras
        raise ImportError("find_label_issues returns a pandas DataFrame: pip install pandas") from None
    x = _as_nchw(images, "images")
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    if len(y) != len(x):
        raise DataError(f"{len(x)} images but {len(y)} labels")
    c = int(y.max()) + 1 if len(y) else 0
    if classes is None:
        classes = [str(i) for i in range(c)]
    if len(y) == 0 or int(y.min()) < 0 or c > len(classes):
        raise DataError(f"labels must be integers 0..{len(classes) - 1} (one per class name); got "
                        f"{int(y.min()) if len(y) else 'none'}..{c - 1}")
    if test_images is not None:
        xt = _as_nchw(test_images, "test_images")
        if test_labels is None:
            raise DataError("test_images given without test_labels")
        yt = torch.as_tensor(np.asarray(test_labels), dtype=torch.int64).reshape(-1)
        if len(yt) != len(xt) or (len(yt) and (int(yt.min()) < 0 or int(yt.max()) >= len(classes))):
            raise DataError(f"test_labels: need {len(xt)} integers in 0..{len(classes) - 1}")
        if xt.shape[1:] != x.shape[1:]:
            raise DataError(f"test images {tuple(xt.shape[1:])} differ in shape from the training images {tuple(x.shape[1:])}")
    else:
        xt, yt = x[:0], y[:0]
    # the images as they are (no resize): their side is the image size
    cfg = issue_config(overrides or [], len(x), None, params, **{"image_size": int(x.shape[-1]), "dataset": "arrays",
                                                                 "noise": "none", **settings})
    data = ImageData("arrays", x, y, xt, yt, classes=list(map(str, classes)), train_labels_known=False)
    cols, _ = report(cfg, out_dir, data=data, noisy=y, progress=progress)
    return pd.DataFrame(cols)
