"""Every plot of the package, the paper's figures and the notebooks', in one style.

Every ``plot_*`` function returns the matplotlib Figure; given ``path_stem``
it also writes ``path_stem.png`` and ``path_stem.pdf`` (200 dpi, fonts
embedded as TrueType), all drawn under :data:`STYLE`. The numbers they show
come from the steps of :class:`hallnll.run.Run` and from
:mod:`hallnll.tools.analysis`; nothing of the method is computed here.

Figures of the paper
    - Fig. 4, :func:`plot_tsne`: t-SNE (openTSNE, :func:`hallnll.tools.analysis.tsne_embed`)
      of real features (light colours) and hallucinated anchors (dark colours,
      larger markers) per class, at most ``n_real`` real and ``m_anchors``
      anchors per class (the paper shows 500 and 25).
    - Fig. 5, :func:`plot_anchor_examples`: for some anchors s_a = h(s_u, s_v),
      the images of the two easy parents s_u, s_v and of the real training
      sample nearest to s_a (:func:`hallnll.tools.analysis.anchor_examples` picks them).
    - Fig. 6, :func:`plot_correction`: the noise rate of the training labels
      and the accuracy of the corrected labels per epoch.
    - Fig. 7, :func:`plot_hard_examples`: a grid of hard samples with their
      given and corrected labels (:func:`hallnll.tools.analysis.hard_examples` picks them).

Steps of the method
    - label noise: :func:`plot_noise_transition` (heatmap of
      P(noisy = j | clean = i) of a :class:`hallnll.noise.NoiseReport`),
      :func:`plot_noise_examples`;
    - §3.1: :func:`plot_loss_gmm` (loss histogram and the two Gaussians of the
      GMM the easiness step fitted), :func:`plot_easiness`, :func:`plot_class_balance`;
    - §3.2: :func:`plot_anchor_similarity`;
    - §3.3 and sweeps: :func:`plot_sweep`;
    - §3.4: :func:`plot_soft_targets` (images above the bars of their soft
      targets: refined labels, guesses, mixed targets);
    - runs: :func:`plot_training` (test accuracy), :func:`plot_history` (any
      per-epoch metric), :func:`plot_table_comparison` (ours vs the paper).

Images are uint8 ``[N, C, H, W]``: 1-channel (8x8 digits, shown dark ink on
white) and 3-channel (CIFAR) both work with :func:`image_grid`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .analysis import as_numpy, label_names, tsne_embed

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
    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in (".png", ".pdf"):
        out.append(str(path_stem) + ext)
        fig.savefig(out[-1], dpi=200, bbox_inches="tight")
    return out


def _finish(fig, path_stem):
    fig.tight_layout()
    if path_stem is not None:
        save(fig, path_stem)
    return fig


# =============================================================== images
def to_display(img) -> np.ndarray:
    """One image ``[C, H, W]`` (or ``[H, W]``) as ``[H, W]`` (1 channel) or ``[H, W, 3]``."""
    a = as_numpy(img)
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
    imgs = as_numpy(images)
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
    mat = as_numpy(rep.transition if hasattr(rep, "transition") else rep).astype(float)
    c = mat.shape[0]
    names = label_names(class_names, c)
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
    clean, noisy = as_numpy(clean), as_numpy(noisy)
    pool = np.nonzero(clean != noisy)[0] if only_flipped else np.arange(len(clean))
    if len(pool) == 0:
        pool = np.arange(len(clean))
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
    names = label_names(class_names, int(max(clean.max(), noisy.max())) + 1)
    titles = [f"{names[clean[i]]}→{names[noisy[i]]}" if clean[i] != noisy[i] else names[clean[i]] for i in idx]
    colors = ["#c0392b" if clean[i] != noisy[i] else "black" for i in idx]
    return image_grid(as_numpy(images)[idx], titles, ncols=ncols, title_colors=colors, suptitle=suptitle,
                      path_stem=path_stem)


# =============================================================== §3.1: loss GMM and easy selection
def plot_loss_gmm(gmm, noisy_mask=None, bins: int = 50, ax=None, title: str | None = None, path_stem=None):
    """Histogram of the normalised per-sample losses with the two Gaussians of
    ``gmm`` (:class:`hallnll.selection.LossGMM`, e.g. ``run.easiness().gmm``), §3.1.

    With ``noisy_mask`` (True where the given label is wrong; known for
    synthetic noise) the histogram is stacked into clean and noisy samples.
    """
    import seaborn as sns

    plt = _plt()
    g = gmm
    with plt.rc_context(STYLE):
        own = ax is None
        fig, ax = plt.subplots(figsize=(5.2, 3.3)) if own else (ax.figure, ax)
        edges = np.linspace(0, 1, bins + 1)
        if noisy_mask is not None:
            nm = as_numpy(noisy_mask).astype(bool)
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
    om, nm = as_numpy(omega).ravel(), as_numpy(noisy_mask).astype(bool).ravel()
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
    f, y = as_numpy(features), as_numpy(labels).astype(int)
    a, ya = as_numpy(anchors), as_numpy(anchor_labels).astype(int)
    rng = np.random.default_rng(seed)
    ri, ai = _cap_per_class(y, n_real, rng), _cap_per_class(ya, m_anchors, rng)
    emb = tsne_embed(np.concatenate([f[ri], a[ai]]), seed=seed, perplexity=perplexity, n_iter=n_iter)
    er, ea = emb[:len(ri)], emb[len(ri):]
    c = int(max(y.max(initial=0), ya.max(initial=0))) + 1
    names = label_names(class_names, c)
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
def plot_anchor_examples(images, examples: list, class_names=None, title: str | None = None, cmap: str = "gray_r",
                         path_stem=None):
    """Fig. 5: per column one anchor; rows: the easy parents s_u and s_v, and the real
    image nearest to s_a = h(s_u, s_v). The bottom title reads
    ``given -> anchor label`` with the cosine similarity; it is green where the
    anchor's label is the true label of that image, red where it is not (black
    when the truth is unknown)."""
    plt = _plt()
    imgs = as_numpy(images)
    if not examples:
        raise ValueError("plot_anchor_examples: no examples (no anchors, or no hard samples)")
    c = max(max(e["label"], e["label_u"], e["label_v"], e["given_nearest"]) for e in examples) + 1
    names = label_names(class_names, c)
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
def plot_hard_examples(images, indices, given, corrected, true=None, class_names=None, ncols: int = 8,
                       title: str | None = None, path_stem=None):
    """Fig. 7: hard samples titled ``given -> corrected`` (or the label when unchanged);
    green where the corrected label is right, red where it is wrong (with the
    true label in brackets), black when the truth is unknown."""
    idx = np.asarray(indices, dtype=int)
    if len(idx) == 0:
        raise ValueError("plot_hard_examples: no samples to show")
    g, c = as_numpy(given).astype(int), as_numpy(corrected).astype(int)
    t = as_numpy(true).astype(int) if true is not None else None
    k = int(max(g.max(), c.max())) + 1
    names = label_names(class_names, k)
    titles, colors = [], []
    for i in idx:
        lab = f"{names[g[i]]}→{names[c[i]]}" if g[i] != c[i] else names[c[i]]
        if t is not None and c[i] != t[i]:
            lab += f" ({names[t[i]]})"
        titles.append(lab)
        colors.append("black" if t is None else ("#1e8449" if c[i] == t[i] else "#c0392b"))
    return image_grid(as_numpy(images)[idx], titles, ncols=ncols, title_colors=colors,
                      suptitle=title if title is not None else "hard samples: given → corrected label",
                      path_stem=path_stem)


def plot_soft_targets(image_rows, bars: dict, titles: Sequence[str] | None = None, class_names=None, marks=None,
                      row_labels: Sequence[str] | None = None, suptitle: str | None = None, cmap: str = "gray_r",
                      path_stem=None):
    """§3.4: a column per image, its image(s) above the bars of its soft targets.

    ``image_rows``: one or more rows of images ``[B, C, H, W]`` (e.g. the two
    sources of a mixup and the mixed image); ``bars``: legend name -> ``[B, K]``
    probabilities, drawn side by side per class; ``titles``: one per column;
    ``marks``: one class per column marked with a triangle under its bars
    (e.g. the true label), or None."""
    plt = _plt()
    rows = [as_numpy(r) for r in (image_rows if isinstance(image_rows, (list, tuple)) else [image_rows])]
    vals = {k: as_numpy(v).astype(float) for k, v in bars.items()}
    b = len(rows[0])
    k = next(iter(vals.values())).shape[1]
    names = label_names(class_names, k)
    mk = as_numpy(marks).astype(int) if marks is not None else None
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(rows) + 1, b, figsize=(1.5 * b + 0.4, 1.2 * len(rows) + 1.7), squeeze=False,
                                 gridspec_kw={"height_ratios": [1] * len(rows) + [1.3]})
        width = 0.8 / max(len(vals), 1)
        colors = ["#aab7b8", "#2e86c1", "#c0392b", "#1e8449"]
        for j in range(b):
            for r, imgs in enumerate(rows):
                show_image(axes[r, j], imgs[j], titles[j] if (titles is not None and r == 0) else None, cmap=cmap)
                if row_labels and j == 0:
                    axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
            ax = axes[-1, j]
            for i, (name, v) in enumerate(vals.items()):
                ax.bar(np.arange(k) + (i - (len(vals) - 1) / 2) * width, v[j], width, color=colors[i % len(colors)],
                       label=name)
            if mk is not None:
                ax.plot([mk[j]], [-0.08], marker="^", color="black", ms=4, clip_on=False)
            ax.set_ylim(0, 1)
            ax.set_xticks(np.arange(k))
            ax.set_xticklabels(names, fontsize=5, rotation=90 if max(len(n) for n in names) > 2 else 0)
            ax.tick_params(axis="y", labelsize=6)
            if j:
                ax.set_yticklabels([])
        if suptitle:
            fig.suptitle(suptitle)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        handles, labels = axes[-1, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(vals), fontsize=7, frameon=False)
        if path_stem is not None:
            save(fig, path_stem)
        return fig


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


def plot_training(histories: dict, path_stem=None, title: str = "", ax=None):
    """Test accuracy per epoch of one or more runs: ``{label: history}`` (metrics.jsonl rows)."""
    plt = _plt()
    with plt.rc_context(STYLE):
        own = ax is None
        fig, ax = plt.subplots(figsize=(5.5, 3.4)) if own else (ax.figure, ax)
        for label, hist in histories.items():
            ax.plot([r["epoch"] for r in hist], [100 * r["test_acc"] for r in hist], label=label, lw=1.6)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(frameon=False)
        if title:
            ax.set_title(title)
        return _finish(fig, path_stem) if own else fig


def plot_correction(history: list, path_stem=None, title: str = ""):
    """Fig. 6: (a) the noise rate of the training labels (after correction) and of the
    labeled set, (b) the accuracy of the corrected labels (clean-hard samples), per epoch."""
    plt = _plt()
    rows = [r for r in history if r.get("label_noise_rate") is not None]
    ep = [r["epoch"] for r in rows]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        axes[0].plot(ep, [100 * r["label_noise_rate"] for r in rows], color="C3", label="training set")
        axes[0].plot(ep, [100 * r["labeled_noise_rate"] for r in rows], color="C1", ls="--", label="labeled set")
        axes[0].set_ylabel("noise rate (%)")
        axes[0].set_title("(a) noise rate")
        axes[0].legend(frameon=False)
        acc = [(r["epoch"], 100 * r["precision_clean_hard"]) for r in rows if r.get("precision_clean_hard") is not None]
        if acc:
            axes[1].plot(*zip(*acc), color="C2")
        axes[1].set_ylabel("corrected-label accuracy (%)")
        axes[1].set_title("(b) correction accuracy")
        for ax in axes:
            ax.set_xlabel("epoch")
        if title:
            fig.suptitle(title)
        return _finish(fig, path_stem)


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

