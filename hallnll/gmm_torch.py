"""scikit-learn's KMeans + GaussianMixture (two components, 1-D) in torch: the
default backend of the §3.1 loss GMM (``Config.gmm_backend="torch"``; the
choice and its measurement: docs/choices.md), called by
:func:`hallnll.selection.fit_loss_gmm`.

The same algorithm as scikit-learn, step for step, on the device of the
losses, in float64, without a host round-trip: k-means++ initialisation with
scikit-learn's draws from ``RandomState(seed)``, Lloyd iterations with its
stopping rules, then EM with its tolerance and ``reg_covar``. Equal to
scikit-learn's omega on the losses of the tests (tests/test_levers.py).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

KMEANS_MAX_ITER, KMEANS_TOL = 300, 1e-4  # scikit-learn's KMeans defaults (the GMM's initialisation)


@functools.lru_cache(maxsize=16)
def _kmeanspp_draws(n: int, seed: int) -> tuple:
    """The random numbers scikit-learn's k-means++ draws for 2 clusters from
    ``RandomState(seed)``: the first centre's index, then 2 uniforms for the
    2 local trials of the second centre (they depend on ``n`` and the seed only)."""
    rs = np.random.RandomState(seed)
    w = np.ones(n)
    first = int(rs.choice(n, p=w / w.sum()))
    return first, tuple(float(u) for u in rs.uniform(size=2 + int(np.log(2))))


def _sq_dist(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """scikit-learn's squared euclidean distance of 1-D points: max(-2 c x + c^2 + x^2, 0)."""
    return (-2 * (c * x) + c * c + x * x).clamp_min(0)


def _power_apply(table: torch.Tensor, state: torch.Tensor, times: int) -> torch.Tensor:
    """``table`` applied ``times`` times to ``state`` (by repeated squaring: log2(times) gathers).

    Indices here are ``[1]`` tensors, never 0-dim ones: indexing with a 0-dim
    integer tensor reads it on the host (ATen turns it into a select)."""
    while times:
        if times & 1:
            state = table[state]
        times >>= 1
        if times:
            table = table[table]
    return state


def kmeans_labels(x: torch.Tensor, seed: int = 0, max_iter: int = KMEANS_MAX_ITER) -> torch.Tensor:
    """scikit-learn's ``KMeans(n_clusters=2, n_init=1, random_state=seed).fit(x).labels_``
    for 1-D float64 ``x``, on its device, without a host round-trip.

    The same steps: data centred; k-means++ (first centre and the uniforms from
    ``RandomState(seed)``, 2 local trials, the candidate of least potential);
    Lloyd iterations with scikit-learn's stopping rules (labels unchanged, or
    centre shift^2 <= 1e-4 * var(x), then a final relabelling; at most
    ``max_iter``). In 1-D with two clusters the labels are a split of the
    sorted values, so one Lloyd step is a map k -> F[k] on the split index,
    computed for every k at once from prefix sums; the stopping rule makes
    it a map on (split, done) and ``max_iter`` steps are log2(max_iter)
    compositions of that map. Equal to scikit-learn's labels up to rounding
    at the threshold between the clusters (a point within ~1e-16 of it).
    """
    n = x.numel()
    dev = x.device
    xc = x - x.mean()
    first, u = _kmeanspp_draws(n, seed)
    # k-means++: the first centre, then the best of 2 candidates drawn by D^2 weighting
    c0 = xc[first:first + 1]  # [1]: every index below is a [1] tensor, no host read
    d0 = _sq_dist(c0, xc)
    pot = d0.sum()
    cand = torch.searchsorted(torch.cumsum(d0, 0), torch.stack([pot * v for v in u])).clamp_max(n - 1)  # no H2D copy
    cand_pot = torch.minimum(d0[None, :], _sq_dist(xc[cand][:, None], xc[None, :])).sum(1)
    c1 = xc[cand[cand_pot.argmin().view(1)]]
    low_is_0 = c0 < c1  # cluster 0 is the low side (ties at the threshold go to cluster 0, as argmin does)

    xs, order = torch.sort(xc)
    csum = torch.cat([xc.new_zeros(1), torch.cumsum(xs, 0)])
    k = torch.arange(n + 1, device=dev)
    kk = k.clamp(1, n - 1).to(x.dtype)
    m_lo = csum[k.clamp(1, n - 1)] / kk  # centres of the split at k (k low values | n - k high ones)
    m_hi = (csum[n] - csum[k.clamp(1, n - 1)]) / (n - kk)

    def split(threshold):  # points on the low side of the threshold between two centres
        right = torch.searchsorted(xs, threshold, right=True)
        left = torch.searchsorted(xs, threshold, right=False)
        return torch.where(low_is_0, right, left).clamp(1, n - 1)

    f = split((m_lo + m_hi) / 2)  # one Lloyd step: split k -> split F[k]
    tol = xc.var(unbiased=False) * KMEANS_TOL
    shift = (m_lo[f] - m_lo) ** 2 + (m_hi[f] - m_hi) ** 2
    # states: k (running) and n + 1 + k (stopped, final split k)
    done = n + 1
    table = torch.where(f == k, k + done, torch.where(shift <= tol, f[f] + done, f))
    table = torch.cat([table, k + done])
    # Lloyd's first step starts from the k-means++ centres, not from a split
    k1 = split((c0 + c1) / 2)
    c0n = torch.where(low_is_0, m_lo[k1], m_hi[k1])
    c1n = torch.where(low_is_0, m_hi[k1], m_lo[k1])
    s1 = torch.where((c0n - c0) ** 2 + (c1n - c1) ** 2 <= tol, f[k1] + done, k1)
    s = _power_apply(table, s1, max(max_iter - 1, 0))
    k_final = torch.where(s >= done, s - done, f[s.clamp_max(n)])  # not stopped in max_iter: relabel (all [1])
    low = torch.empty(n, dtype=torch.bool, device=dev)
    low[order] = torch.arange(n, device=dev) < k_final
    return (low != low_is_0).long()


def _gmm_params(x: torch.Tensor, resp: torch.Tensor, reg_covar: float) -> tuple:
    """scikit-learn's _estimate_gaussian_parameters, 1-D, full covariance."""
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
    mu = (resp.T @ x) / nk
    var = (resp * (x[:, None] - mu) ** 2).sum(0) / nk + reg_covar
    return nk, mu, var


def _gmm_log_resp(x: torch.Tensor, pi: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> tuple:
    """scikit-learn's E-step quantities: (log p(x_n) [N], log responsibilities [N, 2])."""
    prec = 1.0 / torch.sqrt(var)  # the Cholesky factor of the precision, 1-D
    y = x[:, None] * prec - mu * prec
    log_prob = -0.5 * (math.log(2 * math.pi) + y * y) + torch.log(prec)
    weighted = log_prob + torch.log(pi)
    norm = torch.logsumexp(weighted, dim=1)
    return norm, weighted - norm[:, None]


def fit_gmm(x: torch.Tensor, max_iter: int = 10, seed: int = 0, tol: float = 1e-2, reg_covar: float = 5e-4) -> tuple:
    """scikit-learn's ``GaussianMixture(2, max_iter, tol, reg_covar,
    random_state=seed).fit(x)`` and its ``predict_proba`` in torch, on the
    device of ``x`` (float64 [N], already normalised): ``(mu, var, pi, omega)``,
    the components (float64 [2], ``var`` with reg_covar) and the posterior of
    the smaller-mean component (float32 [N]).

    k-means initialisation (:func:`kmeans_labels`), then ``max_iter`` EM
    iterations; an iteration whose lower bound changed by less than ``tol``
    is the last one (as in scikit-learn, its M-step counts): a device-side
    mask freezes the parameters after it, so the loop has a fixed length and
    no host synchronisation.
    """
    x = x.double()
    n = x.numel()
    labels = kmeans_labels(x, seed)
    resp = torch.stack([labels == 0, labels == 1], 1).double()
    nk, mu, var = _gmm_params(x, resp, reg_covar)
    pi = nk / n
    lower = torch.full((), -math.inf, dtype=x.dtype, device=x.device)
    active = torch.ones((), dtype=torch.bool, device=x.device)
    for _ in range(max_iter):
        norm, log_resp = _gmm_log_resp(x, pi, mu, var)
        bound = norm.mean()
        nk, mu_n, var_n = _gmm_params(x, log_resp.exp(), reg_covar)
        pi_n = nk / nk.sum()
        pi, mu, var = (torch.where(active, new, old) for new, old in ((pi_n, pi), (mu_n, mu), (var_n, var)))
        converged = (bound - lower).abs() < tol
        lower = torch.where(active, bound, lower)
        active = active & ~converged
    _, log_resp = _gmm_log_resp(x, pi, mu, var)
    omega = log_resp.exp().gather(1, mu.argmin().expand(n, 1)).squeeze(1).float()
    return mu, var, pi, omega
