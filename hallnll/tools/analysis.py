"""Analysis of a run for the notebooks and the figures: what the steps of
Alg. 1 produced on a run's model, measured against the true labels where they
are known. Every number comes from the steps of :class:`hallnll.run.Run`;
no plotting here (that is :mod:`hallnll.tools.figures`).

- :func:`selection_snapshot`: Alg. 1 lines 6-19 once more on a run's current
  model (easiness, S_e, S_hal, the clean-hard subset), all in one feature
  space, as a :class:`Snapshot`;
- §3.1: :func:`easy_selection_table` (Eq. 1 quotas, sizes and precision per class);
- §3.2: :func:`anchor_parent_similarity` (cos(s_a, s_u), cos(s_a, s_v));
- §3.3: :func:`hard_selection_sweep` (:meth:`Run.select_hard` at several lambda_conf);
- Fig. 4: :func:`tsne_embed`; Fig. 5: :func:`anchor_examples`; Fig. 7: :func:`hard_examples`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..hallucination import HallucinationResult
from ..run import Easiness, Run, Selection, anchor_set


def as_numpy(x) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def label_names(class_names, num_classes: int) -> list:
    """Display names of the classes: ``class_names`` as strings, or 0..C-1."""
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    return [str(c) for c in class_names]


# =============================================================== Alg. 1 lines 6-19 on a trained model
@dataclass
class Snapshot:
    """The selection of one more epoch on a run's model (see :func:`selection_snapshot`)."""

    run: Run
    easiness: Easiness  # logits, feats, losses, gmm, omega (on the run's device)
    easy: Selection  # after Eq. 1 (select_easy)
    hal: HallucinationResult  # S_hal
    selection: Selection  # after §3.3 (select_hard): easy U clean-hard, corrected labels

    @property
    def feats(self) -> torch.Tensor:
        """Features f_theta(x) of the training images, CPU."""
        return self.easiness.feats.cpu()

    @property
    def easy_mask(self) -> torch.Tensor:
        return self.selection.easy_mask.cpu()

    @property
    def clean_hard_mask(self) -> torch.Tensor:
        return self.selection.clean_hard_mask.cpu()

    @property
    def train_labels(self) -> torch.Tensor:
        return self.selection.train_labels.cpu()

    @property
    def given(self) -> torch.Tensor:
        return self.run.given.cpu()

    @property
    def true(self) -> Optional[torch.Tensor]:
        """The clean training labels, when known (synthetic noise), else None."""
        return self.run.true.cpu() if self.run.true is not None else None

    @property
    def anchors(self) -> dict:
        """S_hal as a dict of CPU tensors: anchors, labels, parents, easy_index."""
        return {k: v.detach().cpu() for k, v in anchor_set(self.hal, self.easy).items()}


def selection_snapshot(run: Run) -> Snapshot:
    """Alg. 1 lines 6-19 once more on ``run``'s current model (:meth:`Run.select`):
    easiness, the easy subset, one hallucinator phase (S_hal) and the clean-hard
    subset, all in the feature space of that model.

    The hallucinator phase trains the run's own h_phi on, and draws from the
    run's generator, as the next epoch would: use it on a finished run (e.g.
    ``fit(...).run``), not in the middle of one you will go on training.
    """
    if run.cfg.variant != "hallnll":
        raise ValueError(f"selection_snapshot needs a run of variant hallnll (it has anchors); "
                         f"this one is {run.cfg.variant!r}")
    ez = run.easiness()
    easy = run.select_easy(ez.omega)
    hal = run.hallucinate(ez.feats, easy)
    return Snapshot(run, ez, easy, hal, run.select_hard(ez.feats, easy, hal))


# =============================================================== §3.1
def easy_selection_table(omega, given, true, num_classes: int, p: float, gmm_threshold: float = 0.5, class_names=None):
    """Per class j: N_j, the Eq. 1 quota M_j, and size / precision of the easy subset
    (Eq. 1) and of DivideMix's GMM subset (omega > threshold). A pandas DataFrame
    with a last row ``all``. ``true`` may be None (no precision then)."""
    import pandas as pd

    from ..selection import class_balanced_quota, select_easy, select_gmm

    omega_t = torch.as_tensor(as_numpy(omega)).float()
    given_t = torch.as_tensor(as_numpy(given)).long()
    easy = select_easy(omega_t, given_t, num_classes, p).numpy()
    gmm = select_gmm(omega_t, gmm_threshold).numpy()
    quota = class_balanced_quota(given_t, num_classes, p).numpy()
    g = given_t.numpy()
    right = (g == as_numpy(true)) if true is not None else None
    names = label_names(class_names, num_classes)
    rows = []

    def prec(mask):
        return float(right[mask].mean()) if right is not None and mask.any() else float("nan")

    for j in range(num_classes):
        cj = g == j
        rows.append({"class": names[j], "N_j": int(cj.sum()), "M_j (Eq. 1)": int(quota[j]),
                     "easy": int((easy & cj).sum()), "easy precision": prec(easy & cj),
                     "GMM>thr": int((gmm & cj).sum()), "GMM precision": prec(gmm & cj)})
    rows.append({"class": "all", "N_j": len(g), "M_j (Eq. 1)": int(quota.sum()), "easy": int(easy.sum()),
                 "easy precision": prec(easy), "GMM>thr": int(gmm.sum()), "GMM precision": prec(gmm)})
    return pd.DataFrame(rows)


# =============================================================== §3.2 and §3.3
def anchor_parent_similarity(anchors: dict, feats) -> dict:
    """cos(s_a, s_u) and cos(s_a, s_v) of every anchor of ``anchors`` (the dict of
    :func:`hallnll.run.anchor_set`: anchors, labels, parents, easy_index) with the
    features ``feats`` [N, d] the anchors were made from."""
    import torch.nn.functional as F

    a = torch.as_tensor(anchors["anchors"]).float().cpu()
    par = torch.as_tensor(anchors["parents"]).long().cpu()
    easy_index = torch.as_tensor(anchors["easy_index"]).long().cpu()
    f = torch.as_tensor(as_numpy(feats)).float()
    su, sv = f[easy_index[par[:, 0]]], f[easy_index[par[:, 1]]]
    return {"cos_u": F.cosine_similarity(a, su, dim=1).numpy(), "cos_v": F.cosine_similarity(a, sv, dim=1).numpy(),
            "cos_uv": F.cosine_similarity(su, sv, dim=1).numpy()}


def hard_selection_sweep(snap: Snapshot, lambdas: Sequence[float]):
    """§3.3 (:meth:`Run.select_hard`) at several thresholds lambda_conf on the
    features, easy subset and S_hal of ``snap``.

    Per threshold: |clean-hard|, its share of the hard subset, the number of
    changed labels and, when the true labels are known, the precision of the
    corrected and of the given labels on the clean-hard subset and the number
    of wrong labels fixed and of right labels broken. Returns a pandas DataFrame.
    """
    import pandas as pd

    run, t = snap.run, snap.run.true
    n_hard = len(snap.easy.hard_index)
    rows = []
    for lam in lambdas:
        sel = run.select_hard(snap.easiness.feats, snap.easy, snap.hal, lambda_conf=float(lam))
        ch = sel.clean_hard_mask
        g, corr = run.given[ch], sel.train_labels[ch]
        row = {"lambda_conf": float(lam), "clean-hard": int(ch.sum()), "share of hard": int(ch.sum()) / max(n_hard, 1),
               "changed": int((corr != g).sum())}
        if t is not None:
            tc = t[ch]
            row.update({"precision (corrected)": float((corr == tc).float().mean()) if len(tc) else float("nan"),
                        "precision (given)": float((g == tc).float().mean()) if len(tc) else float("nan"),
                        "fixed": int(((g != tc) & (corr == tc)).sum()),
                        "broken": int(((g == tc) & (corr != tc)).sum())})
        rows.append(row)
    return pd.DataFrame(rows)


# =============================================================== Fig. 4: t-SNE
def tsne_embed(x, seed: int = 0, perplexity: float = 30.0, n_iter: int = 500, n_jobs: int = 1) -> np.ndarray:
    """2-D openTSNE embedding of the rows of ``x`` after L2 normalisation
    (so Euclidean distance ranks pairs as the method's cosine similarity does)."""
    from openTSNE import TSNE

    a = as_numpy(x).astype(np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    perp = float(max(2.0, min(perplexity, (len(a) - 1) / 3.0)))
    emb = TSNE(n_components=2, perplexity=perp, n_iter=n_iter, random_state=seed, n_jobs=n_jobs,
               initialization="pca", verbose=False).fit(a)
    return np.asarray(emb)


# =============================================================== Fig. 5: anchors, parents, nearest images
def anchor_examples(feats, anchors: dict, given, true=None, pool_mask=None, n: int = 8,
                    min_similarity: float | None = None, prefer_corrections: bool = True) -> list:
    """Pick ``n`` anchors for Fig. 5 and find the real image nearest to each.

    ``anchors`` is S_hal as a dict (anchors, labels, parents, easy_index);
    ``feats`` [N, d] the features of the training images in the same feature
    space. The nearest image is searched by cosine similarity among
    ``pool_mask`` (default: every training image that is not easy, i.e. the
    hard subset S_h, as §3.3 does; the parents are always excluded).
    Anchors with ``similarity >= min_similarity`` (the valid ones) are
    preferred, one per nearest image, most similar first; with
    ``prefer_corrections`` about half are anchors whose label differs from
    the nearest image's given label (a correction, as in Fig. 5's fifth
    column). Returns a list of dicts.
    """
    f = torch.as_tensor(as_numpy(feats)).float()
    a = torch.as_tensor(anchors["anchors"]).float().cpu()
    al = torch.as_tensor(anchors["labels"]).long().cpu()
    par = torch.as_tensor(anchors["parents"]).long().cpu()
    easy_index = torch.as_tensor(anchors["easy_index"]).long().cpu()
    g = as_numpy(given).astype(int)
    t = as_numpy(true).astype(int) if true is not None else None
    n_all = len(f)
    if pool_mask is None:
        pool = torch.ones(n_all, dtype=torch.bool)
        pool[easy_index] = False
    else:
        pool = torch.as_tensor(as_numpy(pool_mask)).bool().clone()
    pool_idx = pool.nonzero().squeeze(1)
    if len(pool_idx) == 0 or len(a) == 0:
        return []
    near, sim = _nearest_excluding_parents(a, f, pool_idx, easy_index[par])
    order = torch.argsort(sim, descending=True).tolist()
    if min_similarity is not None:
        valid = [i for i in order if float(sim[i]) >= min_similarity]
        if len(valid) >= n:
            order = valid + [i for i in order if float(sim[i]) < min_similarity]
    seen, corr, conf = set(), [], []
    for i in order:
        j = int(near[i])
        if j in seen:
            continue
        seen.add(j)
        (corr if int(al[i]) != g[j] else conf).append(i)
        if len(corr) >= n and len(conf) >= n:
            break
    if prefer_corrections:
        n_corr = min(len(corr), max(n // 2, n - len(conf)))
        chosen = corr[:n_corr] + conf[:n - n_corr]
    else:
        chosen = sorted(corr + conf, key=lambda i: -float(sim[i]))[:n]
    out = []
    for i in chosen:
        u, v = int(easy_index[par[i, 0]]), int(easy_index[par[i, 1]])
        j = int(near[i])
        out.append({"anchor": i, "label": int(al[i]), "u": u, "v": v, "label_u": int(g[u]), "label_v": int(g[v]),
                    "nearest": j, "similarity": float(sim[i]), "given_nearest": int(g[j]),
                    "true_nearest": int(t[j]) if t is not None else None,
                    "true_u": int(t[u]) if t is not None else None, "true_v": int(t[v]) if t is not None else None})
    return out


def _nearest_excluding_parents(anchors, feats, pool_idx, parents, chunk: int = 2048):
    """Nearest pool sample (cosine) of every anchor that is not one of its own two parents."""
    import torch.nn.functional as F

    a = F.normalize(anchors.float(), dim=1)
    h = F.normalize(feats[pool_idx].float(), dim=1)
    k = min(3, len(pool_idx))
    near, sims = [], []
    for s in range(0, len(a), chunk):
        v, i = (a[s:s + chunk] @ h.T).topk(k, dim=1)
        cand = pool_idx[i]  # [b, k] training indices
        par = parents[s:s + chunk]
        ok = (cand != par[:, :1]) & (cand != par[:, 1:2])
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros(len(ok), dtype=torch.long))
        near.append(cand.gather(1, first[:, None]).squeeze(1))
        sims.append(v.gather(1, first[:, None]).squeeze(1))
    return torch.cat(near), torch.cat(sims)


# =============================================================== Fig. 7: hard examples
def hard_examples(given, corrected, subset, true=None, which: str = "clean-hard", n: int = 16, seed: int = 0,
                  changed_first: bool = True) -> np.ndarray:
    """Indices of ``n`` hard samples for Fig. 7.

    ``subset`` holds the codes of :meth:`hallnll.run.Run.label_report`
    (0 easy, 1 clean-hard, 2 unlabeled / noisy hard) or their names;
    ``which`` is ``clean-hard``, ``unlabeled`` or ``hard`` (both). With
    ``changed_first`` samples whose corrected label differs from the given
    one come first. Random order within each group (``seed``).
    """
    from ..reporting import SUBSETS

    s = as_numpy(subset)
    if s.dtype.kind in "US":
        s = np.array([SUBSETS.index(x) for x in s])
    want = {"clean-hard": (1,), "unlabeled": (2,), "hard": (1, 2)}
    if which not in want:
        raise ValueError(f"which={which!r}: use clean-hard, unlabeled or hard")
    pool = np.nonzero(np.isin(s, want[which]))[0]
    rng = np.random.default_rng(seed)
    pool = rng.permutation(pool)
    if changed_first:
        changed = as_numpy(corrected)[pool] != as_numpy(given)[pool]
        pool = np.concatenate([pool[changed], pool[~changed]])
    return pool[:n]
