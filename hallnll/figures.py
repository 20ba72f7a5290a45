"""The paper's figures, and the plots of the notebooks, from a run's own data.

Every ``plot_*`` function returns the matplotlib Figure; given ``path_stem``
it also writes ``path_stem.png`` and ``path_stem.pdf`` (200 dpi, fonts
embedded as TrueType). The notebooks only call these functions.

Figures of the paper
    - Fig. 4, :func:`plot_tsne`: t-SNE (openTSNE) of real features (light
      colours) and hallucinated anchors (dark colours, larger markers) per
      class, at most ``n_real`` real and ``m_anchors`` anchors per class
      (the paper shows 500 and 25).
    - Fig. 5, :func:`plot_anchor_examples`: for some anchors s_a = h(s_u, s_v),
      the images of the two easy parents s_u, s_v and of the real training
      sample nearest to s_a by cosine similarity of features
      (:func:`anchor_examples` picks them).
    - Fig. 6: :func:`hallnll.reporting.plot_correction` (re-exported here as
      :func:`plot_correction`).
    - Fig. 7, :func:`plot_hard_examples`: a grid of hard samples with their
      given and corrected labels (:func:`hard_examples` picks them).

Steps of the method
    - label noise: :func:`plot_noise_transition` (heatmap of
      P(noisy = j | clean = i) of a :class:`hallnll.noise.NoiseReport`),
      :func:`plot_noise_examples`;
    - §3.1: :func:`fit_loss_gmm` / :func:`plot_loss_gmm` (loss histogram and
      the two fitted Gaussians), :func:`plot_easiness`,
      :func:`easy_selection_table` (Eq. 1 quotas and precision per class);
    - §3.2: :func:`anchor_parent_similarity`, :func:`plot_anchor_similarity`;
    - §3.3: :func:`hard_selection_sweep` (|clean-hard| and precision against
      lambda_conf), :func:`plot_sweep`;
    - runs: :func:`plot_history` (any per-epoch metric), :func:`plot_training`
      (re-exported), :func:`plot_table_comparison` (ours vs the paper).

Analysis helpers
    :func:`run_features` (logits and features f_theta(x) of the training
    images from a trained model) and :func:`selection_snapshot` (steps 1-3 of
    Alg. 1 on the final model: easiness, easy subset, S_hal and the clean-hard
    subset, all in one feature space).

Images are uint8 ``[N, C, H, W]``: 1-channel (8x8 digits, shown dark ink on
white) and 3-channel (CIFAR) both work with :func:`image_grid`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .reporting import _save as _save_files
from .reporting import plot_correction, plot_training

__all__ = [
    "STYLE", "save", "to_display", "show_image", "image_grid", "class_colors",
    "plot_noise_transition", "plot_noise_examples",
    "LossGMM", "fit_loss_gmm", "plot_loss_gmm", "plot_easiness", "easy_selection_table", "plot_class_balance",
    "anchor_parent_similarity", "plot_anchor_similarity",
    "hard_selection_sweep", "plot_sweep",
    "tsne_embed", "plot_tsne", "anchor_examples", "plot_anchor_examples", "hard_examples", "plot_hard_examples",
    "plot_history", "plot_training", "plot_correction", "plot_table_comparison",
    "run_features", "selection_snapshot",
]

#: Matplotlib settings of every figure here (applied with ``rc_context``, so
#: the caller's global style is left alone).
STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.axisbelow": True,
}


def _plt():
    import matplotlib.pyplot as plt

    return plt


def save(fig, path_stem) -> list:
    """Write ``path_stem.png`` and ``path_stem.pdf``; returns the two paths."""
    return _save_files(fig, path_stem)


def _finish(fig, path_stem):
    fig.tight_layout()
    if path_stem is not None:
        save(fig, path_stem)
    return fig


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _names(class_names, num_classes: int) -> list:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    return [str(c) for c in class_names]


# =============================================================== images
def to_display(img) -> np.ndarray:
    """One image ``[C, H, W]`` (or ``[H, W]``) as ``[H, W]`` (1 channel) or ``[H, W, 3]``."""
    a = _np(img)
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise ValueError(f"expected an image [C, H, W] or [H, W], got shape {a.shape}")
    if a.shape[0] == 1:
        return a[0]
    if a.shape[0] == 3:
        return np.transpose(a, (1, 2, 0))
    raise ValueError(f"expected 1 or 3 channels, got {a.shape[0]}")


def show_image(ax, img, title: str | None = None, title_color: str | None = None, frame: str | None = None,
               cmap: str = "gray_r"):
    """Draw one uint8 image on ``ax`` without ticks; ``frame`` colours its border."""
    a = to_display(img)
    if a.ndim == 2:
        vmax = 255 if a.dtype == np.uint8 else None
        ax.imshow(a, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
    else:
        ax.imshow(a, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for s in ax.spines.values():
        s.set_visible(frame is not None)
        if frame is not None:
            s.set_edgecolor(frame)
            s.set_linewidth(2.0)
    if title is not None:
        ax.set_title(title, fontsize=7, color=title_color or "black", pad=2)


def image_grid(images, titles: Sequence[str] | None = None, ncols: int = 8, title_colors=None, frames=None,
               row_labels: Sequence[str] | None = None, suptitle: str | None = None, cmap: str = "gray_r",
               cell: float = 1.05, path_stem=None):
    """A grid of uint8 images ``[N, C, H, W]`` (1 or 3 channels) with optional per-image titles.

    ``title_colors`` / ``frames``: one colour (or None) per image. With
    ``row_labels`` the rows are labelled on the left (used by Fig. 5).
    """
    plt = _plt()
    imgs = _np(images)
    n = len(imgs)
    if n == 0:
        raise ValueError("image_grid: no images to show")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols + (0.6 if row_labels else 0), cell * 1.12 * nrows + (0.3 if suptitle else 0)),
                                 squeeze=False)
        for i, ax in enumerate(axes.flat):
            if i >= n:
                ax.axis("off")
                continue
            show_image(ax, imgs[i], titles[i] if titles is not None else None,
                       title_colors[i] if title_colors is not None else None,
                       frames[i] if frames is not None else None, cmap)
        if row_labels:
            for r, lab in enumerate(row_labels[:nrows]):
                axes[r, 0].set_ylabel(lab, fontsize=8, rotation=90)
        if suptitle:
            fig.suptitle(suptitle)
        return _finish(fig, path_stem)


def class_colors(num_classes: int):
    """(light, dark) RGB colours per class: tab20's pairs for <= 10 classes, else husl shades."""
    import matplotlib.colors as mcolors
    import seaborn as sns

    if num_classes <= 10:
        tab = sns.color_palette("tab20", 20)
        return [tab[2 * c + 1] for c in range(num_classes)], [tab[2 * c] for c in range(num_classes)]
    base = sns.color_palette("husl", num_classes)
    dark = [tuple(0.75 * np.array(mcolors.to_rgb(b))) for b in base]
    light = [tuple(0.45 * np.array(mcolors.to_rgb(b)) + 0.55) for b in base]
    return light, dark


# =============================================================== label noise
def plot_noise_transition(report_or_matrix, class_names=None, ax=None, title: str | None = None,
                          annot: bool | None = None, path_stem=None):
    """Heatmap (seaborn) of the noise transition ``P(noisy = j | clean = i)`` in %.

    Takes a :class:`hallnll.noise.NoiseReport` (its ``transition``) or a
    ``[C, C]`` row-stochastic matrix. Numbers are printed for up to 12 classes.
    """
    import seaborn as sns

    plt = _plt()
    rep = report_or_matrix
    mat = _np(rep.transition if hasattr(rep, "transition") else rep).astype(float)
    c = mat.shape[0]
    names = _names(class_names, c)
    if title is None and hasattr(rep, "actual_rate"):
        title = f"{rep.kind}: {100 * rep.actual_rate:.1f}% noisy"
    annot = c <= 12 if annot is None else annot
    with plt.rc_context(STYLE):
        own = ax is None
        if own:
            side = 3.6 if c <= 12 else 5.5
            fig, ax = plt.subplots(figsize=(side + 0.8, side))
        else:
            fig = ax.figure
        sns.heatmap(100 * mat, ax=ax, vmin=0, vmax=100, cmap="rocket_r", square=True, annot=annot, fmt=".0f",
                    annot_kws={"fontsize": 6}, cbar_kws={"label": "%", "shrink": 0.8},
                    xticklabels=names if c <= 20 else False, yticklabels=names if c <= 20 else False,
                    linewidths=0.3 if c <= 20 else 0, linecolor="white")
        ax.set_xlabel("noisy label j")
        ax.set_ylabel("clean label i")
        ax.tick_params(length=0)
        if title:
            ax.set_title(title)
        return _finish(fig, path_stem) if own else fig


def plot_noise_examples(images, clean, noisy, n: int = 16, class_names=None, only_flipped: bool = True,
                        seed: int = 0, ncols: int = 8, suptitle: str | None = None, path_stem=None):
    """Example training images titled ``clean -> noisy`` (red where the label is wrong)."""
    clean, noisy = _np(clean), _np(noisy)
    pool = np.nonzero(clean != noisy)[0] if only_flipped else np.arange(len(clean))
    if len(pool) == 0:
        pool = np.arange(len(clean))
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
    names = _names(class_names, int(max(clean.max(), noisy.max())) + 1)
    titles = [f"{names[clean[i]]}→{names[noisy[i]]}" if clean[i] != noisy[i] else names[clean[i]] for i in idx]
    colors = ["#c0392b" if clean[i] != noisy[i] else "black" for i in idx]
    return image_grid(_np(images)[idx], titles, ncols=ncols, title_colors=colors, suptitle=suptitle,
                      path_stem=path_stem)


# =============================================================== §3.1: loss GMM and easy selection
@dataclass
class LossGMM:
    """A 2-component GMM on min-max normalised losses, set up as :func:`hallnll.selection.easiness`."""

    losses: np.ndarray  # normalised to [0, 1]
    means: np.ndarray  # [2]
    stds: np.ndarray  # [2]
    weights: np.ndarray  # [2]
    clean: int  # index of the component with the smaller mean
    easiness: np.ndarray  # omega_n: posterior of the clean component

    def density(self, x: np.ndarray, k: int) -> np.ndarray:
        """Weighted density ``w_k N(x; mu_k, sigma_k)`` of component ``k``."""
        return self.weights[k] * np.exp(-0.5 * ((x - self.means[k]) / self.stds[k]) ** 2) / (self.stds[k] * math.sqrt(2 * math.pi))


def fit_loss_gmm(losses, max_iter: int = 10, seed: int = 0) -> LossGMM:
    """Fit the easiness GMM of §3.1 (same normalisation and settings as the training loop)."""
    from sklearn.mixture import GaussianMixture

    l = _np(losses).astype(np.float64).ravel()
    l = (l - l.min()) / max(l.max() - l.min(), 1e-12)
    x = l.reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=1e-2, reg_covar=5e-4, random_state=seed).fit(x)
    means = gmm.means_.ravel()
    stds = np.sqrt(gmm.covariances_.reshape(-1))
    clean = int(np.argmin(means))
    return LossGMM(l, means, stds, gmm.weights_.ravel(), clean, gmm.predict_proba(x)[:, clean])


def plot_loss_gmm(losses, noisy_mask=None, max_iter: int = 10, seed: int = 0, bins: int = 50, ax=None,
                  title: str | None = None, path_stem=None):
    """Histogram of the normalised per-sample losses with the two fitted Gaussians (§3.1).

    With ``noisy_mask`` (True where the given label is wrong; known for
    synthetic noise) the histogram is stacked into clean and noisy samples.
    """
    import seaborn as sns

    plt = _plt()
    g = fit_loss_gmm(losses, max_iter, seed)
    with plt.rc_context(STYLE):
        own = ax is None
        fig, ax = plt.subplots(figsize=(5.2, 3.3)) if own else (ax.figure, ax)
        edges = np.linspace(0, 1, bins + 1)
        if noisy_mask is not None:
            nm = _np(noisy_mask).astype(bool)
            import pandas as pd

            df = pd.DataFrame({"loss": g.losses, "label": np.where(nm, "noisy label", "clean label")})
            sns.histplot(df, x="loss", hue="label", hue_order=["clean label", "noisy label"], bins=edges,
                         stat="density", multiple="stack", palette=["#4c9be8", "#e8804c"], alpha=0.55,
                         edgecolor="white", linewidth=0.3, ax=ax)
        else:
            ax.hist(g.losses, bins=edges, density=True, color="#9aa5b1", alpha=0.7, edgecolor="white", lw=0.3)
        xs = np.linspace(0, 1, 400)
        comp = {g.clean: ("#1f4e89", "clean (low-mean) component"), 1 - g.clean: ("#a0401a", "noisy component")}
        for k in (g.clean, 1 - g.clean):
            ax.plot(xs, g.density(xs, k), color=comp[k][0], lw=1.6, label=f"{comp[k][1]}: μ={g.means[k]:.2f}")
        ax.plot(xs, g.density(xs, 0) + g.density(xs, 1), color="black", lw=1.0, ls="--", label="mixture")
        ax.set_xlabel("normalised cross-entropy loss")
        ax.set_ylabel("density")
        ax.set_xlim(0, 1)
        top = max(np.histogram(g.losses, bins=edges, density=True)[0].max(),
                  float((g.density(xs, 0) + g.density(xs, 1)).max()))
        ax.set_ylim(0, max(top * 1.25, 1e-3))
        handles, labels = ax.get_legend_handles_labels()
        if ax.get_legend() is not None:  # seaborn's hue legend: merge it with the curves
            old = ax.get_legend()
            handles = list(old.legend_handles) + handles
            labels = [t.get_text() for t in old.get_texts()] + labels
            old.remove()
        ax.legend(handles, labels, frameon=False, fontsize=7)
        if title:
            ax.set_title(title)
        return _finish(fig, path_stem) if own else fig


def plot_easiness(omega, noisy_mask, bins: int = 30, ax=None, title: str | None = None, path_stem=None):
    """Histogram of the easiness omega of clean-label and noisy-label samples."""
    plt = _plt()
    om, nm = _np(omega).ravel(), _np(noisy_mask).astype(bool).ravel()
    with plt.rc_context(STYLE):
        own = ax is None
        fig, ax = plt.subplots(figsize=(4.6, 3.0)) if own else (ax.figure, ax)
        edges = np.linspace(0, 1, bins + 1)
        ax.hist(om[~nm], bins=edges, alpha=0.65, color="#4c9be8", label=f"clean label (n={int((~nm).sum())})")
        ax.hist(om[nm], bins=edges, alpha=0.65, color="#e8804c", label=f"noisy label (n={int(nm.sum())})")
        ax.set_xlabel("easiness ω")
        ax.set_ylabel("samples")
        ax.set_yscale("log")
        ax.legend(frameon=False)
        if title:
            ax.set_title(title)
        return _finish(fig, path_stem) if own else fig


def easy_selection_table(omega, given, true, num_classes: int, p: float, gmm_threshold: float = 0.5, class_names=None):
    """Per class j: N_j, the Eq. 1 quota M_j, and size / precision of the easy subset
    (Eq. 1) and of DivideMix's GMM subset (omega > threshold). A pandas DataFrame
    with a last row ``all``. ``true`` may be None (no precision then)."""
    import pandas as pd

    from .selection import class_balanced_quota, select_easy, select_gmm

    omega_t = torch.as_tensor(_np(omega)).float()
    given_t = torch.as_tensor(_np(given)).long()
    easy = select_easy(omega_t, given_t, num_classes, p).numpy()
    gmm = select_gmm(omega_t, gmm_threshold).numpy()
    quota = class_balanced_quota(given_t, num_classes, p).numpy()
    g = given_t.numpy()
    right = (g == _np(true)) if true is not None else None
    names = _names(class_names, num_classes)
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


def plot_class_balance(table, title: str | None = None, path_stem=None):
    """Bars of the per-class size of the Eq. 1 easy subset and of the GMM subset
    (from :func:`easy_selection_table`), with the quota M_j as a line."""
    plt = _plt()
    t = table[table["class"] != "all"]
    x = np.arange(len(t))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        ax = axes[0]
        ax.bar(x - 0.2, t["easy"], 0.4, label="easy (Eq. 1)", color="#4c72b0")
        ax.bar(x + 0.2, t["GMM>thr"], 0.4, label="GMM > threshold", color="#dd8452")
        ax.step(np.r_[x - 0.5, x[-1] + 0.5], np.r_[t["M_j (Eq. 1)"], t["M_j (Eq. 1)"].iloc[-1]], where="post",
                color="black", lw=1, label="quota M_j")
        ax.set_xticks(x, t["class"], rotation=0 if len(t) <= 10 else 90)
        ax.set_ylabel("selected samples")
        ax.set_title("(a) size per class (given label)")
        ax.legend(frameon=False)
        ax = axes[1]
        ax.plot(x, 100 * t["easy precision"], "o-", label="easy (Eq. 1)", color="#4c72b0")
        ax.plot(x, 100 * t["GMM precision"], "s--", label="GMM > threshold", color="#dd8452")
        ax.set_xticks(x, t["class"], rotation=0 if len(t) <= 10 else 90)
        ax.set_ylabel("precision (% clean labels)")
        ax.set_title("(b) precision per class")
        ax.legend(frameon=False)
        if title:
            fig.suptitle(title)
        return _finish(fig, path_stem)


# =============================================================== §3.2 and §3.3
def anchor_parent_similarity(anchors: dict, feats) -> dict:
    """cos(s_a, s_u) and cos(s_a, s_v) of every anchor of ``anchors`` (the dict of
    :class:`hallnll.train.RunResult`: anchors, labels, parents, easy_index) with the
    features ``feats`` [N, d] the anchors were made from."""
    import torch.nn.functional as F

    a = torch.as_tensor(anchors["anchors"]).float().cpu()
    par = torch.as_tensor(anchors["parents"]).long().cpu()
    easy_index = torch.as_tensor(anchors["easy_index"]).long().cpu()
    f = torch.as_tensor(_np(feats)).float()
    su, sv = f[easy_index[par[:, 0]]], f[easy_index[par[:, 1]]]
    return {"cos_u": F.cosine_similarity(a, su, dim=1).numpy(), "cos_v": F.cosine_similarity(a, sv, dim=1).numpy(),
            "cos_uv": F.cosine_similarity(su, sv, dim=1).numpy()}


def plot_anchor_similarity(sims: dict, lambda_p: float | None = None, bins: int = 40, ax=None,
                           title: str | None = None, path_stem=None):
    """Histograms of cos(s_a, s_u), cos(s_a, s_v) and, for reference, cos(s_u, s_v)."""
    plt = _plt()
    with plt.rc_context(STYLE):
        own = ax is None
        fig, ax = plt.subplots(figsize=(5.0, 3.2)) if own else (ax.figure, ax)
        lo = float(min(np.min(v) for v in sims.values()))
        edges = np.linspace(min(lo, 0.0), 1.0, bins + 1)
        for key, lab, col in (("cos_u", "⟨s_a, s_u⟩ (same class)", "#4c72b0"),
                              ("cos_v", "⟨s_a, s_v⟩ (other class)", "#c44e52"),
                              ("cos_uv", "⟨s_u, s_v⟩ (parents)", "#8c8c8c")):
            if key in sims:
                v = sims[key]
                ax.hist(v, bins=edges, alpha=0.55, color=col, label=f"{lab}: mean {np.mean(v):.2f}")
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("anchors")
        ax.legend(frameon=False, fontsize=7)
        if title is None and lambda_p is not None:
            title = f"closeness of hallucinated anchors (λ_p = {lambda_p})"
        if title:
            ax.set_title(title)
        return _finish(fig, path_stem) if own else fig


def hard_selection_sweep(feats, easy_mask, anchors, anchor_labels, given, true, num_classes: int,
                         lambdas: Sequence[float], k: int = 3):
    """§3.3 at several thresholds lambda_conf on the same features and anchors.

    Per threshold: |clean-hard|, its share of the hard subset, the precision
    of the corrected labels and of the given labels on the clean-hard subset,
    the number of changed labels, of wrong labels fixed and of right labels
    broken. ``true`` may be None (counts only). Returns a pandas DataFrame.
    """
    import pandas as pd

    from .selection import select_hard

    f = torch.as_tensor(_np(feats)).float()
    easy = torch.as_tensor(_np(easy_mask)).bool()
    hard_idx = (~easy).nonzero().squeeze(1)
    g = torch.as_tensor(_np(given)).long()
    t = torch.as_tensor(_np(true)).long() if true is not None else None
    a = torch.as_tensor(_np(anchors)).float()
    al = torch.as_tensor(_np(anchor_labels)).long()
    rows = []
    for lam in lambdas:
        hs = select_hard(a, al, f[hard_idx], num_classes, float(lam), k)
        ch = hard_idx[hs.clean]
        corr = hs.corrected[hs.clean]
        row = {"lambda_conf": float(lam), "clean-hard": int(len(ch)),
               "share of hard": len(ch) / max(len(hard_idx), 1),
               "changed": int((corr != g[ch]).sum())}
        if t is not None:
            row.update({"precision (corrected)": float((corr == t[ch]).float().mean()) if len(ch) else float("nan"),
                        "precision (given)": float((g[ch] == t[ch]).float().mean()) if len(ch) else float("nan"),
                        "fixed": int(((g[ch] != t[ch]) & (corr == t[ch])).sum()),
                        "broken": int(((g[ch] == t[ch]) & (corr != t[ch])).sum())})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_sweep(df, x: str, ys: Sequence[str], percent: Sequence[str] = (), title: str | None = None,
               xlabel: str | None = None, path_stem=None):
    """One small panel per column of ``ys`` against ``x`` (columns in ``percent`` shown x100)."""
    plt = _plt()
    ys = list(ys)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(ys), figsize=(3.0 * len(ys), 2.8), squeeze=False)
        for ax, y in zip(axes[0], ys):
            v = df[y].astype(float) * (100 if y in percent else 1)
            ax.plot(df[x], v, "o-", color="#4c72b0")
            ax.set_xlabel(xlabel or x)
            ax.set_ylabel(y + (" (%)" if y in percent else ""))
        if title:
            fig.suptitle(title)
        return _finish(fig, path_stem)


# =============================================================== Fig. 4: t-SNE
def tsne_embed(x, seed: int = 0, perplexity: float = 30.0, n_iter: int = 500, n_jobs: int = 1) -> np.ndarray:
    """2-D openTSNE embedding of the rows of ``x`` after L2 normalisation
    (so Euclidean distance ranks pairs as the method's cosine similarity does)."""
    from openTSNE import TSNE

    a = _np(x).astype(np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    perp = float(max(2.0, min(perplexity, (len(a) - 1) / 3.0)))
    emb = TSNE(n_components=2, perplexity=perp, n_iter=n_iter, random_state=seed, n_jobs=n_jobs,
               initialization="pca", verbose=False).fit(a)
    return np.asarray(emb)


def _cap_per_class(labels: np.ndarray, cap: int, rng) -> np.ndarray:
    keep = []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        keep.append(idx if len(idx) <= cap else rng.choice(idx, cap, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=int)


def plot_tsne(features, labels, anchors, anchor_labels, n_real: int = 500, m_anchors: int = 25,
              class_names=None, seed: int = 0, perplexity: float = 30.0, n_iter: int = 500, ax=None,
              title: str | None = None, legend: bool = True, path_stem=None):
    """Fig. 4: one t-SNE of real features and hallucinated anchors.

    At most ``n_real`` real samples and ``m_anchors`` anchors per class
    (drawn at random with ``seed``); real samples in the light shade of their
    class colour, anchors in the dark shade with larger, outlined markers.
    ``labels`` colour the real samples (pass the clean labels when known, or
    the given ones); ``anchor_labels`` are the anchors' labels y_a = y_u.
    """
    plt = _plt()
    f, y = _np(features), _np(labels).astype(int)
    a, ya = _np(anchors), _np(anchor_labels).astype(int)
    rng = np.random.default_rng(seed)
    ri, ai = _cap_per_class(y, n_real, rng), _cap_per_class(ya, m_anchors, rng)
    emb = tsne_embed(np.concatenate([f[ri], a[ai]]), seed=seed, perplexity=perplexity, n_iter=n_iter)
    er, ea = emb[:len(ri)], emb[len(ri):]
    c = int(max(y.max(initial=0), ya.max(initial=0))) + 1
    names = _names(class_names, c)
    light, dark = class_colors(c)
    with plt.rc_context(STYLE):
        own = ax is None
        fig, ax = plt.subplots(figsize=(5.6, 5.0)) if own else (ax.figure, ax)
        for k in range(c):
            m = y[ri] == k
            ax.scatter(er[m, 0], er[m, 1], s=5, color=light[k], alpha=0.75, linewidths=0, rasterized=True)
        for k in range(c):
            m = ya[ai] == k
            ax.scatter(ea[m, 0], ea[m, 1], s=30, color=dark[k], marker="^", edgecolors="black", linewidths=0.4,
                       label=names[k] if legend and c <= 20 else None, zorder=3)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for s in ax.spines.values():
            s.set_visible(True)
            s.set_linewidth(0.5)
        if legend:
            from matplotlib.lines import Line2D

            extra = [Line2D([], [], ls="", marker="o", ms=4, color="#b0b0b0", label="real (light)"),
                     Line2D([], [], ls="", marker="^", ms=6, color="#404040", markeredgecolor="black",
                            label="hallucinated (dark)")]
            h, lab = ax.get_legend_handles_labels()
            ax.legend(h + extra, lab + [e.get_label() for e in extra], frameon=False, fontsize=7,
                      loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.0)
        ax.set_title(title if title is not None else
                     f"t-SNE: {len(ri)} real features, {len(ai)} hallucinated anchors")
        return _finish(fig, path_stem) if own else fig


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
    f = torch.as_tensor(_np(feats)).float()
    a = torch.as_tensor(anchors["anchors"]).float().cpu()
    al = torch.as_tensor(anchors["labels"]).long().cpu()
    par = torch.as_tensor(anchors["parents"]).long().cpu()
    easy_index = torch.as_tensor(anchors["easy_index"]).long().cpu()
    g = _np(given).astype(int)
    t = _np(true).astype(int) if true is not None else None
    n_all = len(f)
    if pool_mask is None:
        pool = torch.ones(n_all, dtype=torch.bool)
        pool[easy_index] = False
    else:
        pool = torch.as_tensor(_np(pool_mask)).bool().clone()
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


def plot_anchor_examples(images, examples: list, class_names=None, title: str | None = None, cmap: str = "gray_r",
                         path_stem=None):
    """Fig. 5: per column one anchor; rows: the easy parents s_u and s_v, and the real
    image nearest to s_a = h(s_u, s_v). The bottom title reads
    ``given -> anchor label`` with the cosine similarity; it is green where the
    anchor's label is the true label of that image, red where it is not (black
    when the truth is unknown)."""
    plt = _plt()
    imgs = _np(images)
    if not examples:
        raise ValueError("plot_anchor_examples: no examples (no anchors, or no hard samples)")
    c = max(max(e["label"], e["label_u"], e["label_v"], e["given_nearest"]) for e in examples) + 1
    names = _names(class_names, c)
    n = len(examples)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(3, n, figsize=(1.2 * n + 0.7, 4.3), squeeze=False)
        for col, e in enumerate(examples):
            show_image(axes[0, col], imgs[e["u"]], f"s_u: {names[e['label_u']]}", cmap=cmap)
            show_image(axes[1, col], imgs[e["v"]], f"s_v: {names[e['label_v']]}", cmap=cmap)
            ok = None if e["true_nearest"] is None else e["true_nearest"] == e["label"]
            color = "black" if ok is None else ("#1e8449" if ok else "#c0392b")
            lab = (f"{names[e['given_nearest']]}→{names[e['label']]}" if e["given_nearest"] != e["label"]
                   else names[e["label"]])
            show_image(axes[2, col], imgs[e["nearest"]], f"{lab}\ncos {e['similarity']:.2f}", color,
                       frame="#e67e22" if e["given_nearest"] != e["label"] else "#7d3c98", cmap=cmap)
        for r, lab in enumerate(("easy s_u", "easy s_v", "nearest to s_a")):
            axes[r, 0].set_ylabel(lab, fontsize=8)
        fig.suptitle(title if title is not None else
                     "hallucinated anchors: parents (rows 1-2) and nearest real image (row 3)", fontsize=9)
        return _finish(fig, path_stem)


# =============================================================== Fig. 7: hard examples
def hard_examples(given, corrected, subset, true=None, which: str = "clean-hard", n: int = 16, seed: int = 0,
                  changed_first: bool = True) -> np.ndarray:
    """Indices of ``n`` hard samples for Fig. 7.

    ``subset`` holds the codes of :func:`hallnll.train.label_report`
    (0 easy, 1 clean-hard, 2 unlabeled / noisy hard) or their names;
    ``which`` is ``clean-hard``, ``unlabeled`` or ``hard`` (both). With
    ``changed_first`` samples whose corrected label differs from the given
    one come first. Random order within each group (``seed``).
    """
    from .reporting import SUBSETS

    s = _np(subset)
    if s.dtype.kind in "US":
        s = np.array([SUBSETS.index(x) for x in s])
    want = {"clean-hard": (1,), "unlabeled": (2,), "hard": (1, 2)}
    if which not in want:
        raise ValueError(f"which={which!r}: use clean-hard, unlabeled or hard")
    pool = np.nonzero(np.isin(s, want[which]))[0]
    rng = np.random.default_rng(seed)
    pool = rng.permutation(pool)
    if changed_first:
        changed = _np(corrected)[pool] != _np(given)[pool]
        pool = np.concatenate([pool[changed], pool[~changed]])
    return pool[:n]


def plot_hard_examples(images, indices, given, corrected, true=None, class_names=None, ncols: int = 8,
                       title: str | None = None, path_stem=None):
    """Fig. 7: hard samples titled ``given -> corrected`` (or the label when unchanged);
    green where the corrected label is right, red where it is wrong (with the
    true label in brackets), black when the truth is unknown."""
    idx = np.asarray(indices, dtype=int)
    if len(idx) == 0:
        raise ValueError("plot_hard_examples: no samples to show")
    g, c = _np(given).astype(int), _np(corrected).astype(int)
    t = _np(true).astype(int) if true is not None else None
    k = int(max(g.max(), c.max())) + 1
    names = _names(class_names, k)
    titles, colors = [], []
    for i in idx:
        lab = f"{names[g[i]]}→{names[c[i]]}" if g[i] != c[i] else names[c[i]]
        if t is not None and c[i] != t[i]:
            lab += f" ({names[t[i]]})"
        titles.append(lab)
        colors.append("black" if t is None else ("#1e8449" if c[i] == t[i] else "#c0392b"))
    return image_grid(_np(images)[idx], titles, ncols=ncols, title_colors=colors,
                      suptitle=title if title is not None else "hard samples: given → corrected label",
                      path_stem=path_stem)


# =============================================================== runs and tables
def plot_history(history: list, keys: Sequence[str], labels: Sequence[str] | None = None, percent: bool = False,
                 ylabel: str = "", title: str | None = None, x: str = "epoch", xlabel: str | None = None,
                 ax=None, path_stem=None):
    """Curves of ``keys`` against ``x`` (default: per epoch) from a run's history
    (metrics.jsonl rows) or any list of dicts; rows where a key is missing
    (e.g. warm-up epochs) are skipped."""
    plt = _plt()
    with plt.rc_context(STYLE):
        own = ax is None
        fig, ax = plt.subplots(figsize=(5.0, 3.2)) if own else (ax.figure, ax)
        for i, key in enumerate(keys):
            pts = [(r[x], r[key]) for r in history if r.get(key) is not None]
            if pts:
                ep, v = zip(*pts)
                v = np.asarray(v, dtype=float) * (100 if percent else 1)
                ax.plot(ep, v, "o-" if len(ep) <= 60 else "-", ms=3, lw=1.4, label=labels[i] if labels else key)
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel + (" (%)" if percent and ylabel else ""))
        ax.legend(frameon=False)
        if title:
            ax.set_title(title)
        return _finish(fig, path_stem) if own else fig


def plot_table_comparison(rows, title: str | None = None, path_stem=None):
    """Ours (mean ± std over seeds) beside the paper's number for each cell of a table.

    ``rows``: a DataFrame or list of dicts with ``cell``, ``ours_mean``,
    ``ours_std``, ``paper_mean``, ``paper_std`` (percent; NaN for missing).
    """
    import pandas as pd

    plt = _plt()
    df = pd.DataFrame(rows)
    x = np.arange(len(df))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(3.5, 1.2 * len(df) + 1.5), 3.4))
        ax.bar(x - 0.2, df["ours_mean"].astype(float), 0.4, yerr=df["ours_std"].astype(float).fillna(0),
               label="ours", color="#4c72b0", capsize=3)
        ax.bar(x + 0.2, df["paper_mean"].astype(float), 0.4, yerr=df["paper_std"].astype(float).fillna(0),
               label="paper", color="#bdbdbd", capsize=3)
        import textwrap

        ax.set_xticks(x, [textwrap.fill(str(c), 14) for c in df["cell"]], fontsize=7)
        ax.set_ylabel("best test accuracy (%)")
        vals = pd.concat([df["ours_mean"], df["paper_mean"]]).astype(float).dropna()
        if len(vals):
            ax.set_ylim(max(0.0, vals.min() - 10), min(100.0, vals.max() + 5))
        ax.legend(frameon=False)
        if title:
            ax.set_title(title)
        return _finish(fig, path_stem)


# =============================================================== analysis helpers
def run_features(model, data, cfg=None, which: str = "train"):
    """Logits ``[N, C]`` and features ``[N, d]`` (CPU, fp32) of the un-augmented
    ``train`` or ``test`` images of ``data`` under ``model`` (eval mode)."""
    from .data import DeviceImages
    from .engine import predict

    dev = next(model.parameters()).device
    x = data.x_train if which == "train" else data.x_test
    bs = cfg.eval_batch_size if cfg is not None else 1024
    bf16 = bool(cfg.bf16) if cfg is not None else False
    logits, feats = predict(model, DeviceImages(x, data.mean, data.std, dev), bs, bf16)
    return logits.cpu(), feats.cpu()


class _NoTimer:
    def lap(self, name):
        pass


def selection_snapshot(result, data, noisy, cfg, hallucinator: str = "checkpoint", phases: int = 1) -> dict:
    """Steps 1-3 of Alg. 1 once more on the final model of a run, all in one feature space.

    ``result`` is a :class:`hallnll.train.RunResult`. The hallucinator starts
    from the run's trained h_phi (``checkpoint.pt`` in ``result.out_dir``) when
    ``hallucinator="checkpoint"`` and that file exists, else from a fresh one;
    it then runs ``phases`` hallucinator phases of Eq. 2 (the anchors of the
    last are S_hal). Uses :func:`hallnll.train.select_epoch` with
    ``variant=hallnll`` (the run's own variant is ignored here).

    Returns CPU tensors: ``feats``, ``logits``, ``omega``, ``easy_mask``,
    ``clean_hard_mask``, ``train_labels`` (corrected), ``given``, ``true``
    (None when unknown), ``anchors`` (dict: anchors, labels, parents,
    easy_index), ``hal_loss``, and ``hallucinator_source``.
    """
    from .data import DeviceImages
    from .train import make_hallucinator, select_epoch

    model = result.model
    dev = next(model.parameters()).device
    c = data.num_classes
    scfg = cfg.replace(variant="hallnll")
    hal, hal_opt = make_hallucinator(cfg, model.feature_dim, dev)
    source = "fresh"
    ck = Path(result.out_dir) / "checkpoint.pt" if getattr(result, "out_dir", None) else None
    if hallucinator == "checkpoint" and ck is not None and ck.is_file():
        state = torch.load(ck, map_location=dev, weights_only=False)
        hal.load_state_dict(state["hal"])
        source = str(ck)
    train_x = DeviceImages(data.x_train, data.mean, data.std, dev)
    given = torch.as_tensor(noisy).long().to(dev)
    gen = torch.Generator(dev).manual_seed(cfg.seed)
    sel = None
    for _ in range(max(1, phases)):
        sel = select_epoch(model, hal, hal_opt, train_x, given, c, scfg, gen, _NoTimer())
    logits, feats = run_features(model, data, cfg)
    anchors = {k: v.detach().cpu() for k, v in sel["anchors"].items()}
    return {"feats": feats, "logits": logits, "omega": sel["omega"].cpu(), "easy_mask": sel["easy_mask"].cpu(),
            "clean_hard_mask": sel["clean_hard_mask"].cpu(), "train_labels": sel["train_labels"].cpu(),
            "given": given.cpu(), "true": data.y_train.cpu() if data.train_labels_known else None,
            "anchors": anchors, "hal_loss": float(sel["hal_loss"]), "hallucinator_source": source}
