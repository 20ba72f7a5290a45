"""Sample selection: easy samples by the small-loss criterion (§3.1, Eq. 1)
and clean hard samples by hallucinated anchors (§3.3).

Easy selection (§3.1)
    The per-sample cross-entropy loss l_n = CE(g(f(x_n)), y~_n) is fitted by a
    two-component GMM (scikit-learn's ``GaussianMixture``, set up as DivideMix
    does: losses min-max normalised, ``max_iter=10, tol=1e-2,
    reg_covar=5e-4``, k-means initialisation with ``random_state=seed``); the
    easiness omega_n is the posterior of the component with the smaller mean.
    Two implementations of the same fit (``fit_loss_gmm(backend=...)``):
    scikit-learn's on the host, and the same algorithm in torch on the device
    of the losses (:mod:`hallnll.gmm_torch`: the same k-means++ draws, Lloyd
    iterations and stopping rules, the same EM and tolerance, in float64,
    without a host round-trip). The easy subset takes, for every class j
    (by the given label), the M_j samples of highest easiness:

        M_j = min( ceil(|D| * P / C), N_j )                          (Eq. 1)

    and the hard subset is the rest.

Hard selection (§3.3)
    Every hallucinated anchor s_a in S_hal picks its nearest real hard
    feature by cosine similarity, s_r = argmax_n <s_a, s_n>. The anchor is a
    *valid* representative of s_r if <s_a, s_r> >= lambda_conf. A hard sample
    with at least one valid anchor is *clean hard*; its corrected label is
    the majority vote of (at most) K of its valid anchors, the most similar
    ones (ties go to the label of the most similar anchor). Done as chunked
    matrix products on the device, so the |S_hal| x |S_h| similarity matrix
    never has to exist at once.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import gmm_torch


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every sample against its given label, shape [N]."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


GMM_BACKENDS = ("torch", "sklearn")
GMM_TOL, GMM_REG_COVAR = 1e-2, 5e-4  # DivideMix's GaussianMixture(tol=1e-2, reg_covar=5e-4)


@dataclass
class LossGMM:
    """The 2-component GMM of §3.1 fitted to one epoch's per-sample losses.

    Tensors stay where the fit ran (the device for the torch backend): ``x``
    the min-max normalised losses the GMM saw (float64 [N]), ``mu``/``var``/
    ``pi`` its two components (float64 [2], ``var`` includes reg_covar) and
    ``posterior`` omega_n (float32 [N], on the device of the losses). The
    numpy views ``losses``, ``means``, ``stds``, ``weights``, ``clean`` (the
    index of the smaller mean) and ``easiness`` copy to the host when read
    (for plots and tables); training reads only :meth:`omega`.
    """

    x: torch.Tensor
    mu: torch.Tensor
    var: torch.Tensor
    pi: torch.Tensor
    posterior: torch.Tensor
    backend: str = "sklearn"

    @property
    def losses(self) -> np.ndarray:
        return self.x.cpu().numpy()

    @property
    def means(self) -> np.ndarray:
        return self.mu.cpu().numpy()

    @property
    def stds(self) -> np.ndarray:
        return np.sqrt(self.var.cpu().numpy())

    @property
    def weights(self) -> np.ndarray:
        return self.pi.cpu().numpy()

    @property
    def clean(self) -> int:
        return int(np.argmin(self.means))

    @property
    def easiness(self) -> np.ndarray:
        return self.posterior.cpu().numpy()

    def omega(self, device=None) -> torch.Tensor:
        """omega_n as a float32 tensor on ``device`` (default: the CPU)."""
        return self.posterior.to(device if device is not None else "cpu")

    def density(self, x: np.ndarray, k: int) -> np.ndarray:
        """Weighted density ``w_k N(x; mu_k, sigma_k)`` of component ``k`` (for plots)."""
        means, stds, weights = self.means, self.stds, self.weights
        return weights[k] * np.exp(-0.5 * ((x - means[k]) / stds[k]) ** 2) / (stds[k] * math.sqrt(2 * math.pi))


def normalized_losses(losses: torch.Tensor) -> torch.Tensor:
    """DivideMix's min-max normalisation (in float32, as the losses come), then float64 for the GMM."""
    l = losses.detach().float()
    l = (l - l.min()) / (l.max() - l.min()).clamp_min(1e-12)
    return l.double()


def fit_loss_gmm(losses: torch.Tensor, max_iter: int = 10, seed: int = 0, backend: str = "torch") -> LossGMM:
    """Fit the GMM of §3.1 to the per-sample losses (see the module docstring).

    ``backend="torch"`` runs :func:`hallnll.gmm_torch.fit_gmm` on the device of the
    losses; ``"sklearn"`` runs scikit-learn's GaussianMixture on the host
    (one transfer of N floats per epoch). Both give the same omega (see
    docs/choices.md#gmm-backend for the measurements).
    """
    if backend not in GMM_BACKENDS:
        raise ValueError(f"gmm backend {backend!r}: use one of {', '.join(GMM_BACKENDS)}")
    x = normalized_losses(losses)
    if backend == "torch":
        mu, var, pi, omega = gmm_torch.fit_gmm(x, max_iter, seed, GMM_TOL, GMM_REG_COVAR)
        return LossGMM(x, mu, var, pi, omega, "torch")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    xn = x.cpu().numpy().reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=GMM_TOL, reg_covar=GMM_REG_COVAR, random_state=seed)
    with warnings.catch_warnings():  # DivideMix's 10 EM steps often stop short of convergence, by design
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(xn)
    clean = int(np.argmin(gmm.means_.ravel()))
    prob = gmm.predict_proba(xn)[:, clean].astype(np.float32)
    t = torch.from_numpy
    return LossGMM(t(xn.ravel()), t(gmm.means_.ravel().copy()), t(gmm.covariances_.reshape(-1).copy()),
                   t(gmm.weights_.ravel().copy()), t(prob).to(losses.device), "sklearn")


def easiness(losses: torch.Tensor, max_iter: int = 10, seed: int = 0, backend: str = "torch") -> torch.Tensor:
    """omega_n: posterior of the low-mean component of a 2-GMM on the losses,
    a float32 tensor on the device of ``losses``."""
    return fit_loss_gmm(losses, max_iter, seed, backend).omega(losses.device)


def class_balanced_quota(labels: torch.Tensor, num_classes: int, p: float) -> torch.Tensor:
    """M_j of Eq. 1 for every class j, int64 [C]."""
    n_j = torch.bincount(labels, minlength=num_classes)
    m = math.ceil(len(labels) * p / num_classes)
    return torch.clamp(n_j, max=m)


def select_easy(omega: torch.Tensor, labels: torch.Tensor, num_classes: int, p: float) -> torch.Tensor:
    """Boolean mask of the class-balanced easy subset (Eq. 1).

    Within each class (given label) the ``M_j`` samples of highest easiness
    are easy; ties are broken by index so the result is deterministic.
    """
    n = len(labels)
    quota = class_balanced_quota(labels, num_classes, p)
    # sort by (class asc, omega desc, index asc): stable sorts, last key first
    order = torch.argsort(omega, descending=True, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]
    sorted_labels = labels[order]
    starts = torch.cumsum(torch.bincount(labels, minlength=num_classes), 0) - torch.bincount(labels, minlength=num_classes)
    rank = torch.arange(n, device=labels.device) - starts[sorted_labels]
    mask = torch.zeros(n, dtype=torch.bool, device=labels.device)
    mask[order] = rank < quota[sorted_labels]
    return mask


def select_gmm(omega: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """DivideMix's selection (Table 5 row 1): easiness above a threshold, no class balance."""
    return omega > threshold


@dataclass
class HardSelection:
    """Result of §3.3 over the hard subset (indices are positions in S_h)."""

    clean: torch.Tensor  # bool [N_h]: has >= 1 valid anchor
    corrected: torch.Tensor  # int64 [N_h]: voted label (-1 where not clean)
    confidence: torch.Tensor  # float [N_h]: mean similarity of the voting anchors (0 where not clean)
    n_valid_anchors: torch.Tensor  # int64 [N_h]: valid anchors whose nearest hard sample this is
    nearest: torch.Tensor  # int64 [M]: nearest hard index of each anchor
    similarity: torch.Tensor  # float [M]: its cosine similarity


@torch.no_grad()
def nearest_hard(anchors: torch.Tensor, hard_feats: torch.Tensor, chunk: int = 4096):
    """For each anchor, the index of and cosine similarity to its nearest hard feature.

    Chunked over anchors: memory is ``chunk x N_h`` at a time.
    """
    a = F.normalize(anchors.float(), dim=1)
    h = F.normalize(hard_feats.float(), dim=1)
    sims, idx = [], []
    for s in range(0, len(a), chunk):
        v, i = (a[s:s + chunk] @ h.T).max(dim=1)
        sims.append(v)
        idx.append(i)
    if not sims:
        e = anchors.new_zeros(0)
        return e.long(), e.float()
    return torch.cat(idx), torch.cat(sims)


@torch.no_grad()
def select_hard(anchors: torch.Tensor, anchor_labels: torch.Tensor, hard_feats: torch.Tensor,
                num_classes: int, lambda_conf: float, k: int = 3, chunk: int = 4096) -> HardSelection:
    """Clean-hard selection and K-vote label correction (§3.3); see the module docstring."""
    n_h = len(hard_feats)
    dev = hard_feats.device
    nearest, sim = nearest_hard(anchors, hard_feats, chunk)
    valid = sim >= lambda_conf
    v_idx, v_sim, v_lab = nearest[valid], sim[valid], anchor_labels[valid].to(dev)
    n_valid = torch.bincount(v_idx, minlength=n_h)
    clean = n_valid > 0
    # keep the K most similar valid anchors of each hard sample
    order = torch.argsort(v_sim, descending=True, stable=True)
    order = order[torch.argsort(v_idx[order], stable=True)]
    g_idx, g_sim, g_lab = v_idx[order], v_sim[order], v_lab[order]
    starts = torch.cumsum(n_valid, 0) - n_valid
    rank = torch.arange(len(g_idx), device=dev) - starts[g_idx]
    keep = rank < k
    g_idx, g_sim, g_lab = g_idx[keep], g_sim[keep], g_lab[keep]
    flat = g_idx * num_classes + g_lab
    votes = torch.zeros(n_h * num_classes, device=dev).index_add_(0, flat, torch.ones_like(g_sim))
    best = torch.zeros(n_h * num_classes, device=dev).scatter_reduce_(0, flat, g_sim, reduce="amax", include_self=True)
    # a tie in votes goes to the label of the most similar anchor (sim <= 1 < one vote)
    score = (votes + 0.5 * best).view(n_h, num_classes)
    corrected = torch.where(clean, score.argmax(1), torch.full_like(clean, -1, dtype=torch.long))
    n_kept = torch.bincount(g_idx, minlength=n_h).clamp_min(1)
    conf = torch.zeros(n_h, device=dev).index_add_(0, g_idx, g_sim) / n_kept
    return HardSelection(clean, corrected, conf, n_valid, nearest, sim)
