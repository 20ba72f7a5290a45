"""What a noisy label set looks like next to the clean one: its realised rate
and transition matrix ``P(noisy=j | clean=i)`` (:func:`report`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .generators import NoiseError, check_labels


@dataclass
class NoiseReport:
    """What a noisy label set looks like next to the clean one.

    ``transition[i, j]`` is ``P(noisy=j | clean=i)`` (rows of classes with no
    sample are all zero); ``counts[i, j]`` the number of such samples.
    ``target_rate`` is None for labels read from a file (CIFAR-N, CSV).
    """

    kind: str
    target_rate: Optional[float]
    actual_rate: float
    transition: torch.Tensor  # float64 [C, C], CPU
    counts: torch.Tensor  # int64 [C, C], CPU
    seed: Optional[int] = None
    n: int = 0
    note: str = ""

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    def structure(self) -> dict:
        """How concentrated the flips are (the shape that tells PTD or C-based noise from symmetric):

        - ``largest_flip``: the largest off-diagonal ``transition[i, j]``;
        - ``destinations``: the effective number of classes the flips of a
          clean class go to, ``exp(entropy)`` of ``counts[i, j != i]``
          normalised, averaged over the classes with a flip (symmetric noise
          on C classes gives about C - 1; one target class per class gives 1);
        - ``majority_wrong``: how many noisy classes j hold more wrongly
          labelled samples than right ones (``sum_i!=j counts[i, j] > counts[j, j]``).
        """
        off = self.counts.double().clone()
        off.fill_diagonal_(0)
        flips = off.sum(1)
        has = flips > 0
        p = off[has] / flips[has, None]
        entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)
        t_off = self.transition.clone()
        t_off.fill_diagonal_(0)
        right = self.counts.diagonal().double()
        return {"largest_flip": float(t_off.max()) if t_off.numel() else 0.0,
                "destinations": float(entropy.exp().mean()) if bool(has.any()) else 0.0,
                "majority_wrong": int((off.sum(0) > right).sum())}

    def to_dict(self) -> dict:
        return {"kind": self.kind, "target_rate": self.target_rate, "actual_rate": self.actual_rate,
                "seed": self.seed, "n": self.n, "note": self.note, "structure": self.structure(),
                "transition": self.transition.tolist(), "counts": self.counts.tolist()}

    def summary(self) -> str:
        c = self.num_classes
        target = "n/a (labels from a file)" if self.target_rate is None else f"{self.target_rate:.2%}"
        lines = [f"noise: {self.kind}" + ("" if self.seed is None else f" (seed {self.seed})"),
                 f"  samples: {self.n}, classes: {c}",
                 f"  target rate: {target}",
                 f"  actual rate: {self.actual_rate:.2%} ({int(self.n - self.counts.diagonal().sum())} labels differ)"]
        if self.note:
            lines.append(f"  note: {self.note}")
        if self.actual_rate > 0:
            st = self.structure()
            lines.append(f"  structure: largest flip {st['largest_flip']:.1%}, flips of a class over "
                         f"{st['destinations']:.1f} effective classes, {st['majority_wrong']} noisy classes "
                         f"mostly wrong")
        if c <= 20:
            lines.append("  transition P(noisy=j | clean=i), %:")
            head = "  clean\\noisy " + "".join(f"{j:>6d}" for j in range(c)) + "      n"
            lines.append(head)
            rows_n = self.counts.sum(1).tolist()
            for i, row in enumerate(self.transition.tolist()):
                cells = "".join(f"{100 * v:6.1f}" if v > 0 else f"{'.':>6}" for v in row)
                lines.append(f"  {i:>11d} {cells} {rows_n[i]:>6d}")
        else:  # a 100x100 table is unreadable: per-class flip rates and the top confusions
            per_class = 1.0 - self.transition.diagonal()
            present = self.counts.sum(1) > 0
            pc = per_class[present]
            lines.append(f"  per-class flip rate: min {pc.min().item():.2%}, median {pc.median().item():.2%}, "
                         f"max {pc.max().item():.2%}")
            off = self.counts.clone()
            off.fill_diagonal_(0)
            top = torch.topk(off.flatten(), k=min(10, off.numel())).indices.tolist()
            pairs = [f"{t // c}->{t % c} ({int(off.flatten()[t])})" for t in top if off.flatten()[t] > 0]
            if pairs:
                lines.append("  most frequent flips: " + ", ".join(pairs))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def report(clean: torch.Tensor, noisy: torch.Tensor, num_classes: int, kind: str,
           target_rate: Optional[float], seed: Optional[int], note: str = "") -> NoiseReport:
    """The realised rate and the row-normalised transition matrix of ``noisy`` vs ``clean``."""
    clean = check_labels(clean, num_classes, "clean labels").cpu()
    noisy = check_labels(noisy, num_classes, "noisy labels").cpu()
    if clean.shape != noisy.shape:
        raise NoiseError(f"report: {len(clean)} clean labels but {len(noisy)} noisy labels")
    c = num_classes
    counts = torch.bincount(clean * c + noisy, minlength=c * c).view(c, c)
    rows = counts.sum(1, keepdim=True)
    transition = counts.double() / rows.clamp_min(1).double()
    n = int(clean.numel())
    actual = float((clean != noisy).double().mean()) if n else 0.0
    return NoiseReport(kind, target_rate, actual, transition, counts, seed, n, note)
