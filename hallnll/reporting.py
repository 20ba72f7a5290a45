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

(The plots of these files are in :mod:`hallnll.tools.figures`.)

All writes are atomic (temporary file, then rename), so an interrupted run
never leaves a half-written file. A checkpoint carries the SHA-256 of its
contents (:func:`state_digest`, under ``"sha256"``): a file that still loads
but whose bytes changed is found on reading (:func:`load_checkpoint`).
:func:`remove_outputs` clears a run's files before a new run is written there.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

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


DIGEST_KEY = "sha256"


def state_digest(state) -> str:
    """SHA-256 over everything in ``state`` (a checkpoint's dict) but its own digest: each
    tensor's dtype, shape and bytes, numpy arrays likewise, plain values by ``repr``, other
    objects pickled; dicts in their order (kept by ``torch.save`` / ``torch.load``)."""
    import numpy as np

    h = hashlib.sha256()

    def walk(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(o, np.ndarray):
            h.update(f"A{o.dtype}{o.shape}".encode())
            h.update(np.ascontiguousarray(o).tobytes())
        elif isinstance(o, dict):
            items = [(k, v) for k, v in o.items() if o is not state or k != DIGEST_KEY]
            h.update(f"D{len(items)}".encode())
            for k, v in items:
                walk(k)
                walk(v)
        elif isinstance(o, (list, tuple)):
            h.update(f"{'L' if isinstance(o, list) else 'U'}{len(o)}".encode())
            for v in o:
                walk(v)
        elif o is None or isinstance(o, (bool, int, float, str, bytes)):
            h.update(f"{type(o).__name__}:{o!r}".encode())
        else:
            h.update(pickle.dumps(o, protocol=4))

    walk(state)
    return h.hexdigest()


def save_checkpoint(state: dict, path) -> None:
    """``state`` with its :func:`state_digest`, written atomically."""
    atomic_torch_save({**{k: v for k, v in state.items() if k != DIGEST_KEY}, DIGEST_KEY: state_digest(state)}, path)


class DamagedCheckpoint(ValueError):
    """A checkpoint that loads but whose contents differ from what was written."""


def load_checkpoint(path) -> dict:
    """A checkpoint read onto the CPU and checked against its digest (one written
    before digests existed is read unchecked); :class:`DamagedCheckpoint` on a mismatch."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and DIGEST_KEY in state:
        if state_digest(state) != state[DIGEST_KEY]:
            raise DamagedCheckpoint("its contents do not match the checksum written with it (the file changed "
                                    "after it was saved)")
        state = {k: v for k, v in state.items() if k != DIGEST_KEY}
    return state


def remove_outputs(folder, names) -> list:
    """Remove the run outputs ``names`` (files or folders, and their ``.tmp``) from ``folder``
    before a new run writes there, in the order given (a run's checkpoint last): each by one
    rename into ``folder/.replaced``, then that folder. Interrupted at any point, what is left
    is part of the old run, its checkpoint with it until the end; run again, it finishes the job.
    Returns the names removed."""
    folder = Path(folder)
    trash = folder / ".replaced"
    if trash.exists():
        shutil.rmtree(trash)  # left by an interrupted clear: already out of the run
    gone = []
    for n in names:
        for m in (n + ".tmp", n):
            src = folder / m
            if src.exists() or src.is_symlink():
                trash.mkdir(exist_ok=True)
                os.replace(src, trash / m)
                gone.append(m)
    if trash.exists():
        shutil.rmtree(trash)
    return gone


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


def loss_row(losses: dict, sfx: str = "") -> dict:
    """An SSL epoch's losses in the metrics row: ``l_ce``, ``l_mse`` and ``train_loss`` (Eq. 3's total)."""
    row = {f"{k}{sfx}": float(v) for k, v in losses.items() if k != "loss"}
    row[f"train_loss{sfx}"] = float(losses["loss"])
    return row


def hal_row(hal, sfx: str = "") -> dict:
    """The hallucinator phase's mean L_hal and its two terms (Eq. 2)."""
    return {f"hal_loss{sfx}": float(hal.loss), f"hal_closeness{sfx}": float(hal.closeness),
            f"hal_ce{sfx}": float(hal.ce)}


def ssl_row(losses: dict, hal, sel, true: torch.Tensor | None, given: torch.Tensor) -> dict:
    """The SSL epoch's part of the metrics row for one network: its losses (:func:`loss_row`),
    the hallucinator's (:func:`hal_row`, with ``hal``) and the selection's (:func:`selection_metrics`)."""
    row = loss_row(losses)
    if hal is not None:
        row.update(hal_row(hal))
    row.update(selection_metrics(true, given, sel.labeled_mask, sel.easy_mask, sel.clean_hard_mask, sel.train_labels))
    return row


def phase_seconds(seconds: dict) -> dict:
    """The ``seconds`` of the metrics row: each timed phase and their total."""
    return {**seconds, "total": sum(seconds.values())}


@torch.no_grad()
def selection_diagnostics(logits: torch.Tensor, feats: torch.Tensor, sel, hal, true: torch.Tensor | None,
                          given: torch.Tensor, classifier, lambda_conf: float, lambda_p: float, seed: int) -> dict:
    """What the labeled/unlabeled split and S_hal look like (metrics.jsonl keys).

    ``logits``/``feats`` are the easiness pass's, ``sel`` the epoch's
    :class:`hallnll.run.Selection`, ``hal`` its S_hal (or None):

    - ``unlabeled_pred_acc`` (truth known): accuracy of the model's own
      predictions on the unlabeled set, the basis of MixMatch's label
      guesses there; ``target_acc``: share of all training samples whose
      SSL target is right (label where labeled, prediction where not),
      against ``1 - noise rate`` for cross-entropy on the given labels;
    - ``anchor_valid_share``: share of anchors whose nearest hard feature
      is at cosine >= lambda_conf (a valid representative, §3.3);
      ``anchor_sim_q10/q50/q90``: quantiles of that nearest cosine;
      ``real_pair_sim_q50``: median cosine of random pairs of real
      training features (4096 pairs drawn from ``seed``), the level below
      which lambda_conf filters nothing that chance would not already pass;
    - ``hal_*``: where S_hal lies against its parents and g_rho (:func:`anchor_geometry`).
    """
    out: dict = {}
    unl = ~sel.labeled_mask
    if true is not None:
        pred_right = logits.argmax(1) == true
        if bool(unl.any()):
            out["unlabeled_pred_acc"] = float(pred_right[unl].float().mean())
        # what the SSL epoch trains towards, sample by sample: the (corrected)
        # label where labeled, the model's own prediction (the basis of its
        # guess) where not; to beat cross-entropy this must beat the given labels
        target_right = torch.where(sel.labeled_mask, sel.train_labels == true, pred_right)
        out["target_acc"] = float(target_right.float().mean())
    if hal is not None and sel.hard is not None and len(sel.hard.similarity):
        dev = feats.device
        sim = sel.hard.similarity.float()
        q = torch.quantile(sim, torch.tensor([0.1, 0.5, 0.9], device=sim.device))
        out.update(anchor_valid_share=float((sim >= lambda_conf).float().mean()),
                   anchor_sim_q10=float(q[0]), anchor_sim_q50=float(q[1]), anchor_sim_q90=float(q[2]))
        g = torch.Generator(dev).manual_seed(seed)
        n = len(feats)
        i = torch.randint(0, n, (4096,), device=dev, generator=g)
        j = torch.randint(0, n, (4096,), device=dev, generator=g)
        pair = torch.nn.functional.cosine_similarity(feats[i].float(), feats[j].float(), dim=1)
        out["real_pair_sim_q50"] = float(pair.median())
        easy_idx = sel.easy_mask.nonzero().squeeze(1)
        out.update(anchor_geometry(hal.anchors, hal.labels, hal.parents, feats[easy_idx], given[easy_idx],
                                   classifier, lambda_p, float(feats.float().norm(dim=1).mean()),
                                   sel.hard.nearest, len(sel.hard_index)))
    return out


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


@torch.no_grad()
def anchor_geometry(anchors: torch.Tensor, labels: torch.Tensor, parents: torch.Tensor, easy_feats: torch.Tensor,
                    easy_labels: torch.Tensor, classifier, lambda_p: float, real_norm: float,
                    nearest: torch.Tensor | None = None, n_hard: int | None = None, top: float = 0.05,
                    max_rank_anchors: int = 1024) -> dict:
    """Where the anchors of S_hal lie relative to their parents (§3.2), for metrics.jsonl.

    ``anchors`` [M, d] with ``labels`` y~_u and ``parents`` [M, 2] (positions
    (u, v) in the easy set), ``easy_feats`` / ``easy_labels`` the easy set,
    ``classifier`` the frozen g_rho (an ``nn.Linear``), ``real_norm`` the mean
    norm of the real training features, ``nearest`` the §3.3 nearest hard
    index of each anchor among ``n_hard`` hard samples. Keys (means over S_hal):

    - ``hal_cos_u``, ``hal_cos_v``: cos(s_a, s_u), cos(s_a, s_v);
      ``hal_cos_uv``: cos(s_u, s_v) of the same pairs;
    - ``hal_opt_cos_u``, ``hal_opt_cos_v``: the same for the optimum of L_clo
      alone, a ∝ lambda_p û + (1 - lambda_p) v̂; ``hal_v_share``: the share of
      the way from cos(s_u, s_v) to that optimum reached by cos(s_a, s_v)
      (0: no nearer s_v than s_u is, 1: as near as L_clo alone would put it);
    - ``hal_norm_ratio``: mean ||s_a|| / ``real_norm``;
    - ``hal_p_u``, ``hal_p_v``: g_rho's softmax at y~_u, y~_v on s_a;
      ``hal_p_u_real_norm``, ``hal_p_v_real_norm``: on s_a rescaled to ``real_norm``;
    - ``hal_within_cos`` / ``easy_within_cos``: mean cosine of two anchors
      (two easy features) of the same class, averaged over classes;
    - ``hal_parent_top``: share of anchors whose own s_u is among the
      ``top`` (5%) same-class easy features nearest to s_a (on at most
      ``max_rank_anchors`` anchors, evenly spaced): how much an anchor
      depends on its own input; low with ``hal_within_cos`` above
      ``easy_within_cos`` means the anchors of a class clump together;
    - ``hal_nearest_distinct``: distinct hard samples that are some anchor's
      nearest, and ``hal_nearest_distinct_share`` of ``n_hard``.

    O(M d) plus one ``max_rank_anchors x |S_e|`` product: cheap next to an epoch.
    """
    a = anchors.float()
    e = easy_feats.float()
    y = labels.long().to(a.device)
    el = easy_labels.long().to(a.device)
    su, sv = e[parents[:, 0]], e[parents[:, 1]]
    yv = el[parents[:, 1]]
    an, un, vn = F.normalize(a, dim=1), F.normalize(su, dim=1), F.normalize(sv, dim=1)
    opt = F.normalize(lambda_p * un + (1 - lambda_p) * vn, dim=1)
    cos_u, cos_v, cos_uv = (an * un).sum(1), (an * vn).sum(1), (un * vn).sum(1)
    opt_u, opt_v = (opt * un).sum(1), (opt * vn).sum(1)
    w = classifier.weight.detach().float()
    b = classifier.bias.detach().float() if classifier.bias is not None else None
    p = F.softmax(F.linear(a, w, b), 1)
    p_real = F.softmax(F.linear(an * real_norm, w, b), 1)
    rows = torch.arange(len(a), device=a.device)
    out = {"hal_cos_u": cos_u.mean(), "hal_cos_v": cos_v.mean(), "hal_cos_uv": cos_uv.mean(),
           "hal_opt_cos_u": opt_u.mean(), "hal_opt_cos_v": opt_v.mean(),
           "hal_v_share": (cos_v.mean() - cos_uv.mean()) / (opt_v.mean() - cos_uv.mean()).clamp_min(1e-8),
           "hal_norm_ratio": a.norm(dim=1).mean() / max(real_norm, 1e-12),
           "hal_p_u": p[rows, y].mean(), "hal_p_v": p[rows, yv].mean(),
           "hal_p_u_real_norm": p_real[rows, y].mean(), "hal_p_v_real_norm": p_real[rows, yv].mean(),
           "hal_within_cos": _within_class_cos(an, y), "easy_within_cos": _within_class_cos(F.normalize(e, dim=1), el)}
    pick = torch.linspace(0, len(a) - 1, min(len(a), max_rank_anchors), device=a.device).long()
    sims = an[pick] @ F.normalize(e, dim=1).T  # [m, |S_e|]
    same = el[None, :] == y[pick, None]
    own = sims.gather(1, parents[pick, :1]).squeeze(1)
    rank = ((sims > own[:, None]) & same).sum(1)  # same-class easy features nearer to s_a than its s_u
    n_top = (same.sum(1).float() * top).ceil().clamp_min(1)
    out["hal_parent_top"] = (rank < n_top).float().mean()
    out = {k: float(v) for k, v in out.items()}
    if nearest is not None:
        out["hal_nearest_distinct"] = int(torch.unique(nearest).numel())
        if n_hard:
            out["hal_nearest_distinct_share"] = out["hal_nearest_distinct"] / n_hard
    return out


def _within_class_cos(unit: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cosine of two distinct rows of the same class (rows unit norm), averaged over classes with >= 2 rows."""
    c = int(labels.max()) + 1
    s = torch.zeros(c, unit.shape[1], device=unit.device).index_add_(0, labels, unit)
    n = torch.bincount(labels, minlength=c).float()
    ok = n >= 2
    return (((s * s).sum(1) - n)[ok] / (n * (n - 1))[ok]).mean()
