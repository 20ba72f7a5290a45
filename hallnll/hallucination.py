"""Hard anchor hallucination (§3.2, Eq. 2) and the hallucinator training
phase of Alg. 1 (lines 5-15).

Given an easy feature (s_u, y~_u) and another easy feature (s_v, y~_v) of a
*different* class, the hallucinator h_phi (a two-layer MLP on the
concatenation) produces the anchor s_a = h_phi(s_u, s_v) with label y~_u,
trained with

    L_hal = -lambda_p <s_a, s_u> - (1 - lambda_p) <s_a, s_v> + H(g_rho(s_a), y~_u)     (Eq. 2)

where <.,.> is the cosine similarity and H the cross-entropy through the
frozen linear classifier g_rho. f_theta and g_rho are frozen during this
phase; only phi is updated. Every anchor produced in an iteration of the
phase is kept: together they form S_hal.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class Hallucinator(nn.Module):
    """h_phi: concat(s_u, s_v) [2d] -> hidden -> s_a [d], ReLU between.

    The paper says only "a simple two-layer MLP"; ``hidden=0`` means d.
    ``out_relu`` ends it with a ReLU, so that anchors live where real features
    do: f_theta ends in ReLU + average pooling, its features are non-negative.
    Without it the anchors drift into negative coordinates and, pushed by the
    cross-entropy term, to norms ~3x the real ones, and sit apart from every
    real hard feature (lower cosine, their own clusters in a t-SNE).
    """

    def __init__(self, dim: int, hidden: int = 0, out_relu: bool = True):
        super().__init__()
        hidden = hidden or dim
        layers = [nn.Linear(2 * dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim)]
        if out_relu:
            layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, s_u: torch.Tensor, s_v: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([s_u, s_v], dim=1))


def hallucination_loss(s_a, s_u, s_v, logits_a, y_u, lambda_p: float = 0.6):
    """Eq. 2, averaged over the batch. Returns ``(total, closeness, ce)``."""
    clo = -(lambda_p * F.cosine_similarity(s_a, s_u, dim=1) + (1 - lambda_p) * F.cosine_similarity(s_a, s_v, dim=1)).mean()
    ce = F.cross_entropy(logits_a, y_u)
    return clo + ce, clo, ce


def sample_partners(labels: torch.Tensor, u_idx: torch.Tensor, num_classes: int, generator=None) -> torch.Tensor:
    """For each anchor parent u, a random easy sample v with a different label.

    ``labels`` are the labels of the easy set; returns positions in it. Draws a
    class uniformly among the other classes that have easy samples, then a
    member of that class uniformly, all batched.
    """
    dev = labels.device
    counts = torch.bincount(labels, minlength=num_classes)
    present = counts > 0  # the caller checks once that >= 2 classes are present (no host sync here)
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    y_u = labels[u_idx]
    # choose among present classes except y_u: weight 1 for present, 0 otherwise
    w = present.float().expand(len(u_idx), num_classes).clone()
    w[torch.arange(len(u_idx), device=dev), y_u] = 0.0
    cls = torch.multinomial(w, 1, generator=generator).squeeze(1)
    r = torch.rand(len(u_idx), device=dev, generator=generator)
    pos = starts[cls] + (r * counts[cls]).long().clamp_max(counts[cls] - 1)
    return order[pos]


@dataclass
class HallucinationResult:
    anchors: torch.Tensor  # [M, d] S_hal
    labels: torch.Tensor  # [M] y~_a = y~_u
    parents: torch.Tensor  # [M, 2] positions (u, v) in the easy set
    loss: torch.Tensor  # 0-dim, mean L_hal over the phase
    closeness: torch.Tensor
    ce: torch.Tensor


def hallucinate(hallucinator: Hallucinator, optimizer, classifier: nn.Linear, easy_feats: torch.Tensor,
                easy_labels: torch.Tensor, num_classes: int, iters: int, batch_size: int,
                lambda_p: float = 0.6, generator=None) -> HallucinationResult:
    """The hallucinator training phase: ``iters`` updates of phi on Eq. 2.

    Each iteration draws a mini-batch of easy parents s_u (a permutation of
    the easy set, repeated as needed), a partner s_v of another class for
    each, produces the anchors, keeps them in S_hal and takes one step.
    """
    dev = easy_feats.device
    n = len(easy_feats)
    if len(torch.unique(easy_labels)) < 2:
        raise ValueError("hallucination needs easy samples of at least two classes")
    w = classifier.weight.detach().float()
    b = classifier.bias.detach().float() if classifier.bias is not None else None
    feats = easy_feats.detach().float()
    anchors, labels, parents = [], [], []
    tot = torch.zeros(3, device=dev)
    perm = torch.randperm(n, device=dev, generator=generator)
    reps = -(-iters * batch_size // n)
    if reps > 1:
        perm = torch.cat([perm] + [torch.randperm(n, device=dev, generator=generator) for _ in range(reps - 1)])
    hallucinator.train()
    for it in range(iters):
        u = perm[it * batch_size:(it + 1) * batch_size]
        v = sample_partners(easy_labels, u, num_classes, generator)
        s_u, s_v, y_u = feats[u], feats[v], easy_labels[u]
        s_a = hallucinator(s_u, s_v)
        loss, clo, ce = hallucination_loss(s_a, s_u, s_v, F.linear(s_a, w, b), y_u, lambda_p)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        anchors.append(s_a.detach())
        labels.append(y_u)
        parents.append(torch.stack([u, v], 1))
        tot += torch.stack([loss.detach(), clo.detach(), ce.detach()])
    tot = tot / max(iters, 1)
    return HallucinationResult(torch.cat(anchors), torch.cat(labels), torch.cat(parents), tot[0], tot[1], tot[2])
