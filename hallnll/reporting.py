"""What a run leaves behind, and the selection metrics.

- ``metrics.jsonl``: one JSON object per epoch (see :func:`selection_metrics`).
- ``summary.json``: best and last test accuracy (with a validation split, also
  ``best_val_epoch``, its ``best_val_acc`` and ``test_acc_at_best_val``), epochs, wall seconds (the
  whole run, and this session's apart after a resume), the noise's target rate
  only for generated noise.
- ``labels.csv``: the method's selection after the last epoch, one row per
  training sample of the run: (``path`` for a folder,) ``index, given_label,
  corrected_label, easiness, selected_as_clean, subset, predicted_label`` and
  ``true_label`` when the clean labels are known. (The label-issue report,
  out of sample and with class names, is :mod:`hallnll.label_issues`.)

(The plots of these files are in :mod:`hallnll.figures`.)

All writes are atomic (temporary file, then rename), so an interrupted run
never leaves a half-written file.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import torch

SUBSETS = ("easy", "clean-hard", "unlabeled")


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj, path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_metrics(path, history: list) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def read_metrics(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summarize(history: list, wall_seconds: float, cfg=None) -> dict:
    accs = [r["test_acc"] for r in history if r.get("test_acc") is not None]
    best = max(range(len(accs)), key=accs.__getitem__) if accs else None
    ssl = [r["seconds"]["total"] for r in history if r.get("phase") == "ssl"]
    out = {
        "best_acc": accs[best] if accs else None,
        "best_epoch": history[best]["epoch"] if accs else None,
        "last_acc": accs[-1] if accs else None,
        "epochs": len(history),
        "wall_seconds": wall_seconds,
        "seconds_per_ssl_epoch": sum(ssl) / len(ssl) if ssl else None,
    }
    vals = [(r["val_acc"], i) for i, r in enumerate(history) if r.get("val_acc") is not None]
    if vals:  # App. A: the epoch chosen on the validation set, and its test accuracy (the paper's quantity)
        v, i = max(vals, key=lambda t: (t[0], -t[1]))  # the first epoch of the best validation accuracy
        out.update(best_val_acc=v, best_val_epoch=history[i]["epoch"], test_acc_at_best_val=history[i].get("test_acc"))
    if cfg is not None:
        from .config import GENERATED_NOISE

        out.update(name=cfg.name, variant=cfg.variant, dataset=cfg.dataset, noise=cfg.noise, seed=cfg.seed,
                   arch=cfg.arch, epochs_planned=cfg.epochs)
        if cfg.noise in GENERATED_NOISE:  # a target rate exists only for generated noise
            out["noise_rate"] = cfg.noise_rate
    return out


def selection_metrics(true: torch.Tensor | None, given: torch.Tensor, labeled_mask: torch.Tensor,
                      easy_mask: torch.Tensor, clean_hard_mask: torch.Tensor, train_labels: torch.Tensor) -> dict:
    """Counts and, when the true labels are known, the quality of the selection.

    ``train_labels`` are the labels the SSL step uses (corrected for clean-hard).
    - precision_easy: share of easy samples whose given label is right;
    - precision_clean_hard: share of clean-hard samples whose corrected label is
      right (the accuracy of the corrected labels);
    - corrected_acc: share of the labels the method changed (clean-hard samples
      whose corrected label differs from the given one) that are right;
    - fixed: clean-hard samples whose wrong given label was corrected to the truth;
    - recall_clean: share of the truly clean samples that are labeled;
    - labeled_noise_rate: noise rate of the labeled set's training labels;
    - label_noise_rate: noise rate of the whole training set after correction
      (Fig. 6a's "overall noise rate").
    """
    m = {
        "n_labeled": int(labeled_mask.sum()),
        "n_easy": int(easy_mask.sum()),
        "n_clean_hard": int(clean_hard_mask.sum()),
        "n_unlabeled": int((~labeled_mask).sum()),
        "n_changed": int((clean_hard_mask & (train_labels != given)).sum()),
    }
    if true is None:
        return m

    def mean(b):
        return float(b.float().mean()) if b.numel() else None

    right_given = given == true
    right_train = train_labels == true
    changed = clean_hard_mask & (train_labels != given)
    m.update(
        precision_easy=mean(right_given[easy_mask]),
        precision_clean_hard=mean(right_train[clean_hard_mask]),
        corrected_acc=mean(right_train[changed]),
        fixed=int((clean_hard_mask & ~right_given & right_train).sum()),
        recall_clean=mean(labeled_mask[right_given]),
        labeled_noise_rate=mean(~right_train[labeled_mask]),
        label_noise_rate=mean(~right_train),
    )
    return m


def write_labels_csv(path, given, corrected, easiness, subset_codes, predicted, true=None, paths=None) -> None:
    """The method's selection after the last epoch (one row per training sample of
    this run, labels as class indices; ``path`` first for a folder). The label-issue
    report of a dataset is ``label_issues.csv`` (:mod:`hallnll.label_issues`)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["index", "given_label", "corrected_label", "easiness", "selected_as_clean", "subset", "predicted_label"]
    if true is not None:
        header.append("true_label")
    w.writerow((["path"] if paths else []) + header)
    cols = [t.tolist() for t in (given, corrected, easiness, subset_codes, predicted)]
    tl = true.tolist() if true is not None else None
    for i, (g, c, e, s, p) in enumerate(zip(*cols)):
        row = ([paths[i]] if paths else []) + [i, g, c, f"{e:.4f}", int(s < 2), SUBSETS[s], p]
        if tl is not None:
            row.append(tl[i])
        w.writerow(row)
    atomic_write_text(path, buf.getvalue())


def read_labels_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
