"""Label noise: the synthetic and published noisy labels of §4.1.

Kinds (``cfg.noise``), each a function of this module:

- ``none``: the clean labels.
- ``symmetric``: :func:`symmetric`, instance-independent uniform flips.
- ``asymmetric``: :func:`asymmetric`, class-pair flips; DivideMix's CIFAR-10
  map (Li et al., "DivideMix: Learning with Noisy Labels as Semi-supervised
  Learning", ICLR 2020).
- ``ptd``: :func:`ptd`, part-dependent instance-dependent noise of Xia et al.,
  "Part-dependent Label Noise: Towards Instance-dependent Label Noise",
  NeurIPS 2020 (their public ``get_instance_noisy_label``), one of the two
  synthetic IDN kinds of the paper (§4.1, "PTD-20%/40%" in Table 6).
- ``classification``: :func:`classification_based`, the classification-based
  IDN of Chen et al., "Beyond Class-Conditional Assumption: A Primary Attempt
  to Combat Instance-Dependent Label Noise", AAAI 2021 (public repository
  chenpf1025/IDN): a CNN is trained on the clean labels, its softmax outputs
  are averaged over the epochs (:func:`average_softmax`) and the samples whose
  largest wrong-class probability is highest are flipped to that class. The
  labels behind Table 2 were released as ``dependent0.{1,2,3,4}.csv``; use
  ``noise=file`` to train on exactly those.
- ``cifar-n``: the human labels of CIFAR-10N/100N (Wei et al., "Learning with
  Noisy Labels Revisited: A Study Using Real-World Human Annotations", ICLR
  2022), read by :func:`hallnll.data.load_cifar_n`.
- ``file``: any CSV with header ``label,label_noisy`` (:func:`load_label_csv`).

Every generator is deterministic for a seed: random numbers are drawn from a
seeded CPU ``torch.Generator`` (so a label set does not depend on the device),
and the arithmetic runs on the device of the input tensors. :func:`report`
summarises a label set as its realised noise rate and transition matrix
``P(noisy=j | clean=i)``. ``hallnll noise`` (:func:`cli`) writes a label CSV.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .config import NOISE_KINDS, ConfigError
from .data.sources import DataError, ImageData

CSV_HEADER = ("label", "label_noisy")

# DivideMix's CIFAR-10 asymmetric map: truck -> automobile, bird -> airplane,
# deer -> horse, cat <-> dog (dataloader_cifar.py, ``self.transition``).
DIVIDEMIX_CIFAR10_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


class NoiseError(ValueError):
    """A noise setting or a label file is unusable; the message says how to fix it."""


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
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

    def to_dict(self) -> dict:
        return {"kind": self.kind, "target_rate": self.target_rate, "actual_rate": self.actual_rate,
                "seed": self.seed, "n": self.n, "note": self.note,
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
    clean = _check_labels(clean, num_classes, "clean labels").cpu()
    noisy = _check_labels(noisy, num_classes, "noisy labels").cpu()
    if clean.shape != noisy.shape:
        raise NoiseError(f"report: {len(clean)} clean labels but {len(noisy)} noisy labels")
    c = num_classes
    counts = torch.bincount(clean * c + noisy, minlength=c * c).view(c, c)
    rows = counts.sum(1, keepdim=True)
    transition = counts.double() / rows.clamp_min(1).double()
    n = int(clean.numel())
    actual = float((clean != noisy).double().mean()) if n else 0.0
    return NoiseReport(kind, target_rate, actual, transition, counts, seed, n, note)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _check_rate(rate) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise NoiseError(f"noise_rate={rate!r} is not a number; use a value in [0, 1]") from None
    if not (math.isfinite(r) and 0.0 <= r <= 1.0):
        raise NoiseError(f"noise_rate={rate!r} must lie in [0, 1] (0.4 means 40% of the labels are wrong)")
    return r


def _check_labels(y, num_classes: int, what: str) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.dim() != 1:
        raise NoiseError(f"{what}: expected a 1-D label tensor, got shape {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise NoiseError(f"{what}: expected integer labels, got {y.dtype}")
    y = y.long()
    if num_classes < 1:
        raise NoiseError(f"{what}: num_classes must be at least 1, got {num_classes}")
    if y.numel():
        lo, hi = torch.aminmax(y)
        lo, hi = int(lo), int(hi)  # one sync, outside any loop
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise NoiseError(f"{what}: label {bad} lies outside [0, {num_classes})")
    return y


def _count(rate: float, n: int) -> int:
    """Python's ``round(rate * n)`` (halves to even: 66.5 -> 66), at most n."""
    return min(n, int(round(rate * n)))


def _cpu_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


# --------------------------------------------------------------------------
# instance-independent noise
# --------------------------------------------------------------------------
def symmetric(clean: torch.Tensor, num_classes: int, rate: float, seed: int) -> torch.Tensor:
    """Flip exactly ``round(rate * N)`` samples, each to a uniformly drawn *other* class.

    Unlike DivideMix, whose symmetric noise draws the new label from all C
    classes (so it may redraw the true one, and a nominal 40% gives about
    36% wrong labels on CIFAR-10), every flipped sample here changes class:
    the realised rate equals ``rate`` up to rounding.
    """
    rate = _check_rate(rate)
    clean = _check_labels(clean, num_classes, "symmetric noise")
    n = clean.numel()
    k = _count(rate, n)
    if k and num_classes < 2:
        raise NoiseError("symmetric noise needs at least 2 classes")
    g = _cpu_generator(seed)
    idx = torch.randperm(n, generator=g)[:k]
    shift = torch.randint(1, max(num_classes, 2), (k,), generator=g)  # 1..C-1: never the same class
    noisy = clean.clone()
    idx = idx.to(clean.device)
    noisy[idx] = (clean[idx] + shift.to(clean.device)) % num_classes
    return noisy


def _default_mapping(num_classes: int) -> dict:
    if num_classes == 10:
        return dict(DIVIDEMIX_CIFAR10_MAP)
    return {j: (j + 1) % num_classes for j in range(num_classes)}


def asymmetric(clean: torch.Tensor, num_classes: int, rate: float, seed: int,
               mapping: Optional[dict] = None) -> torch.Tensor:
    """Class-pair noise: exactly ``round(rate * N_j)`` samples of each mapped class j go to ``mapping[j]``.

    The default map is DivideMix's CIFAR-10 one {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    (truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog) when
    ``num_classes == 10``, else the pair flip ``j -> (j + 1) % C``. Classes not
    in the map keep their labels, so the overall rate is ``rate`` times the
    share of mapped samples. DivideMix instead picks ``int(rate * N)`` samples
    from the whole set and maps them (unmapped classes unchanged), which gives
    the per-class rate only in expectation; here it is exact per class.
    """
    rate = _check_rate(rate)
    clean = _check_labels(clean, num_classes, "asymmetric noise")
    mapping = _default_mapping(num_classes) if mapping is None else dict(mapping)
    for src, dst in mapping.items():
        if not (0 <= int(src) < num_classes and 0 <= int(dst) < num_classes):
            raise NoiseError(f"asymmetric noise: mapping {src}->{dst} names a class outside [0, {num_classes})")
        if int(src) == int(dst):
            raise NoiseError(f"asymmetric noise: mapping {src}->{dst} maps a class to itself")
    g = _cpu_generator(seed)
    clean_cpu = clean.cpu()
    noisy = clean_cpu.clone()
    n = clean_cpu.numel()
    # One random key per sample; within each class the k lowest keys flip. Fully
    # vectorised: sort by (class, key), then rank inside the class.
    key = torch.rand(n, generator=g, dtype=torch.float64)
    order = torch.argsort(clean_cpu.double() * 2.0 + key, stable=True)  # classes apart, random inside
    counts = torch.bincount(clean_cpu, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - starts[clean_cpu[order]]
    table = torch.arange(num_classes)
    quota = torch.zeros(num_classes, dtype=torch.long)
    for src, dst in mapping.items():
        table[int(src)] = int(dst)
        quota[int(src)] = _count(rate, int(counts[int(src)]))
    flip = rank < quota[clean_cpu]
    noisy[flip] = table[clean_cpu[flip]]
    return noisy.to(clean.device)


# --------------------------------------------------------------------------
# PTD (Xia et al., 2020)
# --------------------------------------------------------------------------
def _channel_stats(x: torch.Tensor, chunk: int):
    """Per-channel mean and std of uint8 images in [0, 1], without a float copy of the whole set."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64, device=x.device)
    s2 = torch.zeros(c, dtype=torch.float64, device=x.device)
    for a in range(0, x.shape[0], chunk):
        xb = x[a:a + chunk].double() / 255.0
        s += xb.sum(dim=(0, 2, 3))
        s2 += (xb * xb).sum(dim=(0, 2, 3))
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / m
    var = (s2 / m - mean * mean).clamp_min(0) * (m / max(m - 1, 1))
    return mean, var.sqrt().clamp_min(1e-3)


def ptd(x_uint8: torch.Tensor, clean: torch.Tensor, num_classes: int, rate: float, seed: int,
        std: float = 0.1, mean=None, std_pix=None) -> torch.Tensor:
    """Part-dependent (instance-dependent) noise of Xia et al. (NeurIPS 2020).

    A vectorised port of their public ``get_instance_noisy_label``:

    1. per-sample flip rate ``q_i ~ N(rate, std)`` truncated to [0, 1];
    2. ``W ~ randn(C, D, C)``, D the flattened image size;
    3. ``A_i = x_i @ W[y_i]`` with ``x_i`` the image normalised per channel as
       ``(x / 255 - mean) / std_pix`` and flattened (C, H, W order);
       ``A_i[y_i] = -inf``;
    4. ``p_i = q_i * softmax(A_i)``, ``p_i[y_i] += 1 - q_i``;
       ``noisy_i ~ Categorical(p_i)``.

    So each sample keeps its label with probability ``1 - q_i`` and otherwise
    moves to a class chosen by a random linear function of its pixels: the
    noise depends on the image, not only on the class. The realised rate is
    ``rate`` in expectation (binomial spread; truncation shifts the mean of
    ``q`` near 0 and 1). ``rate == 0`` gives no flips; ``std == 0`` uses
    ``q_i = rate``. ``mean``/``std_pix`` default to the statistics of ``x``.

    Samples are grouped by class and projected in chunks, so 50,000 CIFAR
    images never need more than ~100 MB at a time. Random numbers come from
    a seeded CPU generator; the arithmetic runs on ``x_uint8.device`` in
    float64.
    """
    rate = _check_rate(rate)
    if not (math.isfinite(float(std)) and std >= 0):
        raise NoiseError(f"ptd_std={std!r} must be a non-negative number (Xia et al. use 0.1)")
    if not isinstance(x_uint8, torch.Tensor) or x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
        raise NoiseError("ptd: expected uint8 images [N, C, H, W]"
                         + (f", got {x_uint8.dtype} {tuple(x_uint8.shape)}" if isinstance(x_uint8, torch.Tensor) else ""))
    clean = _check_labels(clean, num_classes, "ptd noise")
    n, ch, h, w = x_uint8.shape
    if clean.numel() != n:
        raise NoiseError(f"ptd: {n} images but {clean.numel()} labels")
    dev = x_uint8.device
    clean = clean.to(dev)
    c = num_classes
    d = ch * h * w
    chunk = max(1, min(4096, (1 << 25) // d))  # <= 32M float64 elements per chunk

    g = _cpu_generator(seed)
    q = torch.empty(n, dtype=torch.float64)
    if rate == 0.0:
        q.zero_()
    elif std == 0.0:
        q.fill_(rate)
    else:
        torch.nn.init.trunc_normal_(q, mean=rate, std=float(std), a=0.0, b=1.0, generator=g)
    W = torch.randn(c, d, c, generator=g, dtype=torch.float32)
    u = 1.0 - torch.rand(n, generator=g, dtype=torch.float64)  # (0, 1]
    q, u, W = q.to(dev), u.to(dev), W.to(dev)

    if mean is None or std_pix is None:
        m_est, s_est = _channel_stats(x_uint8, chunk)
    mean_t = m_est if mean is None else torch.as_tensor(mean, dtype=torch.float64, device=dev)
    std_t = s_est if std_pix is None else torch.as_tensor(std_pix, dtype=torch.float64, device=dev)
    if mean_t.numel() != ch or std_t.numel() != ch:
        raise NoiseError(f"ptd: mean/std need {ch} per-channel values, got {mean_t.numel()} and {std_t.numel()}")
    shift = mean_t.reshape(ch, 1).expand(ch, h * w).reshape(1, d)
    scale = std_t.reshape(ch, 1).expand(ch, h * w).reshape(1, d)

    counts = torch.bincount(clean, minlength=c).tolist()  # the one host sync: segment sizes
    order = torch.argsort(clean, stable=True)
    noisy = clean.clone()
    start = 0
    for k in range(c):
        wk = W[k].double()  # [D, C]
        for a in range(start, start + counts[k], chunk):
            idx = order[a:min(a + chunk, start + counts[k])]
            xb = (x_uint8[idx].reshape(-1, d).double() / 255.0 - shift) / scale
            logits = xb @ wk
            logits[:, k] = -math.inf
            qi = q[idx]
            p = qi[:, None] * torch.softmax(logits, dim=1)
            p[:, k] += 1.0 - qi
            cdf = p.cumsum(1)
            # inverse-CDF draw; the target lies in (0, total], so a zero-probability
            # class is never chosen
            new = (cdf < (u[idx] * cdf[:, -1])[:, None]).sum(1).clamp_max(c - 1)
            noisy[idx] = new
        start += counts[k]
    return noisy


# --------------------------------------------------------------------------
# classification-based noise (Chen et al., 2021)
# --------------------------------------------------------------------------
def classification_based(clean: torch.Tensor, num_classes: int, rate: float, avg_probs: torch.Tensor) -> torch.Tensor:
    """Flip the ``round(rate * N)`` samples a clean-label CNN finds most confusable.

    ``avg_probs`` [N, C] is the softmax averaged over training epochs
    (:func:`average_softmax`). The score of sample i is its largest wrong-class
    probability ``max_{c != y_i} avg_probs[i, c]``; the samples with the
    highest scores (ties: lower index first) get that argmax wrong class.
    The realised rate is exact.
    """
    rate = _check_rate(rate)
    clean = _check_labels(clean, num_classes, "classification-based noise")
    avg_probs = torch.as_tensor(avg_probs)
    n = clean.numel()
    if avg_probs.dim() != 2 or tuple(avg_probs.shape) != (n, num_classes):
        raise NoiseError(f"classification-based noise: avg_probs must be [{n}, {num_classes}], "
                         f"got {tuple(avg_probs.shape)}")
    if num_classes < 2 and _count(rate, n):
        raise NoiseError("classification-based noise needs at least 2 classes")
    if not bool(torch.isfinite(avg_probs).all()):
        raise NoiseError("classification-based noise: avg_probs holds NaN or inf (did the CNN diverge? lower lr)")
    dev = avg_probs.device
    clean = clean.to(dev)
    masked = avg_probs.float().scatter(1, clean[:, None], -math.inf)
    score, wrong = masked.max(1)
    k = _count(rate, n)
    top = torch.sort(score, descending=True, stable=True).indices[:k]
    noisy = clean.clone()
    noisy[top] = wrong[top]
    return noisy


def average_softmax(data: ImageData, cfg, device=None, progress: bool = True) -> torch.Tensor:
    """The per-sample softmax of a clean-label CNN, averaged over its training epochs.

    Chen et al. (2021) train a standard CNN on the clean labels and average
    its softmax outputs over the epochs. Here ``build_model(cfg.arch, C,
    in_channels)`` is trained for ``cfg.cbased_epochs`` epochs of
    cross-entropy (SGD with cfg.lr, cfg.momentum, cfg.weight_decay; random
    crop/flip per cfg.crop_padding/cfg.hflip) on the device, and after each
    epoch the softmax of the un-augmented training images is added to a
    running sum. Returns the mean ``[N, C]`` (float32, on the device).

    Seeded by ``cfg.noise_seed``: the model is initialised under
    ``torch.random.fork_rng`` (the caller's global RNG state is left as it
    was) and batches/augmentation use a seeded generator. On CUDA, cuDNN
    kernels may still make two runs differ in the last bits.
    """
    from tqdm.auto import tqdm

    from .engine import ce_epoch, make_optimizer, predict, resolve_device
    from .data.gpu import DeviceImages
    from .models import build_model

    epochs = int(cfg.cbased_epochs)
    if epochs < 1:
        raise NoiseError(f"cbased_epochs={cfg.cbased_epochs!r}: classification-based noise needs at least "
                         f"1 epoch of the clean-label CNN (Chen et al. use 20 on CIFAR-10)")
    dev = resolve_device(cfg.device) if device is None else torch.device(device)
    c = data.num_classes
    cuda = dev.type == "cuda"
    channels_last = bool(getattr(cfg, "channels_last", False)) and cuda
    bf16 = bool(cfg.bf16) and cuda
    images = DeviceImages(data.x_train, data.mean, data.std, dev, channels_last=channels_last)
    labels = _check_labels(data.y_train, c, "training labels").to(dev)
    fork = [dev.index if dev.index is not None else torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(int(cfg.noise_seed))
        model = build_model(cfg.arch, c, data.in_channels, getattr(cfg, "pretrained", "")).to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
        gen = torch.Generator(device=dev).manual_seed(int(cfg.noise_seed))
        total = torch.zeros(len(images), c, dtype=torch.float32, device=dev)
        bar = tqdm(range(epochs), desc="c-based noise: clean-label CNN", unit="epoch", disable=not progress)
        for _ in bar:
            loss = ce_epoch(model, images, labels, opt, cfg.batch_size, generator=gen,
                            padding=cfg.crop_padding, hflip=cfg.hflip, bf16=bf16)
            logits, _ = predict(model, images, cfg.eval_batch_size, bf16, features=False)
            total += torch.softmax(logits.float(), dim=1)
            if progress:
                bar.set_postfix(loss=f"{loss.item():.3f}")  # one read per epoch
    return total / epochs


# --------------------------------------------------------------------------
# label CSV
# --------------------------------------------------------------------------
def load_label_csv(path, num_classes: Optional[int] = None, clean: Optional[torch.Tensor] = None):
    """Read a ``label,label_noisy`` CSV (the format of the published C-based labels).

    Returns ``(clean_from_file, noisy)`` as int64 CPU tensors. With
    ``num_classes`` every label must lie in [0, C); with ``clean`` (the
    dataset's labels) the file must have one row per training image and its
    ``label`` column must equal them, so a file made for another dataset or
    another image order is refused.
    """
    p = Path(path).expanduser()
    name = str(p)
    if not p.is_file():
        raise NoiseError(f"noise file {name!r} not found; set noise_file to a CSV with header "
                         f"label,label_noisy (e.g. dependent0.4.csv of Chen et al.) or write one "
                         f"with `hallnll noise --out FILE.csv`")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise NoiseError(f"noise file {name!r} cannot be read as text: {e}") from None
    lines = text.splitlines()
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    if tuple(header[:2]) != CSV_HEADER:
        raise NoiseError(f"noise file {name!r}: header is {lines[0] if lines else '(empty file)'!r}, expected "
                         f"'label,label_noisy' (column 1 the clean label, column 2 the noisy label)")
    body = [ln for ln in lines[1:] if ln.strip()]
    if not body:
        raise NoiseError(f"noise file {name!r} has a header but no rows")
    try:
        arr = np.array([ln.split(",")[:2] for ln in body], dtype=np.int64)
    except ValueError:
        for i, ln in enumerate(body):
            parts = ln.split(",")
            try:
                if len(parts) < 2:
                    raise ValueError
                int(parts[0]), int(parts[1])
            except ValueError:
                raise NoiseError(f"noise file {name!r}: row {i + 1} ({ln!r}) is not two integer labels") from None
        raise NoiseError(f"noise file {name!r}: rows are not two integer labels each") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise NoiseError(f"noise file {name!r}: every row needs two integer labels label,label_noisy")
    file_clean = torch.from_numpy(np.ascontiguousarray(arr[:, 0]))
    noisy = torch.from_numpy(np.ascontiguousarray(arr[:, 1]))
    lo = int(arr.min())
    if lo < 0 or (num_classes is not None and int(arr.max()) >= num_classes):
        bad_rows = np.nonzero((arr < 0).any(1) | ((arr >= num_classes).any(1) if num_classes is not None else False))[0]
        r = int(bad_rows[0])
        rng = f"[0, {num_classes})" if num_classes is not None else "[0, C)"
        raise NoiseError(f"noise file {name!r}: row {r + 1} ({body[r]!r}) has a label outside {rng}; "
                         f"the file belongs to a dataset with more classes, or is corrupt")
    if clean is not None:
        clean = torch.as_tensor(clean).long().cpu()
        if len(file_clean) != len(clean):
            raise NoiseError(f"noise file {name!r} has {len(file_clean)} rows, the training set has {len(clean)}; "
                             f"use the label file made for this dataset (one row per training image, "
                             f"in the dataset's order)")
        diff = file_clean != clean
        if bool(diff.any()):
            first = int(diff.nonzero()[0, 0])
            raise NoiseError(f"noise file {name!r}: its label column disagrees with the dataset's labels on "
                             f"{int(diff.sum())} of {len(clean)} rows (first at row {first + 1}: file {int(file_clean[first])}, "
                             f"dataset {int(clean[first])}); the file was made for another dataset or image order")
    return file_clean, noisy


def save_label_csv(path, clean: torch.Tensor, noisy: torch.Tensor) -> Path:
    """Write ``label,label_noisy`` rows atomically (a temporary file, then a rename).

    Nothing is written unless both label vectors are valid (1-D, integer,
    non-negative, equally long).
    """
    clean_t = torch.as_tensor(clean)
    noisy_t = torch.as_tensor(noisy)
    for what, y in (("clean labels", clean_t), ("noisy labels", noisy_t)):
        if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise NoiseError(f"save_label_csv: {what} must be a 1-D integer tensor, got {y.dtype} {tuple(y.shape)}")
        if y.numel() and int(y.min()) < 0:
            raise NoiseError(f"save_label_csv: {what} contain a negative label")
    if clean_t.numel() != noisy_t.numel():
        raise NoiseError(f"save_label_csv: {clean_t.numel()} clean labels but {noisy_t.numel()} noisy labels")
    p = Path(path).expanduser()
    if p.is_dir():
        raise NoiseError(f"--out {str(p)!r} is a folder; give a file name such as labels.csv")
    arr = np.stack([clean_t.long().cpu().numpy(), noisy_t.long().cpu().numpy()], 1)
    body = "\n".join(f"{a},{b}" for a, b in arr.tolist())
    text = ",".join(CSV_HEADER) + "\n" + body + ("\n" if body else "")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


# --------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------
def make_noisy_labels(cfg, data: ImageData, device=None, progress: bool = True):
    """The noisy training labels named by ``cfg.noise`` and their :class:`NoiseReport`.

    Returns ``(noisy, report)``, ``noisy`` an int64 CPU tensor aligned with
    ``data.y_train``. Settings are checked before any work.
    """
    kind = cfg.noise
    if kind not in NOISE_KINDS:
        raise NoiseError(f"noise={kind!r} is not a noise kind; use one of {', '.join(NOISE_KINDS)}")
    rate = _check_rate(cfg.noise_rate)
    if kind == "classification" and int(cfg.cbased_epochs) < 1:
        raise NoiseError(f"cbased_epochs={cfg.cbased_epochs!r}: noise=classification needs at least 1 epoch")
    if kind == "ptd" and not cfg.ptd_std >= 0:
        raise NoiseError(f"ptd_std={cfg.ptd_std!r} must not be negative")
    if kind == "file" and not cfg.noise_file:
        raise NoiseError("noise=file needs noise_file: a CSV with header label,label_noisy")
    if kind == "cifar-n" and not cfg.cifar_n_file:
        raise NoiseError("noise=cifar-n needs cifar_n_file: CIFAR-10_human.pt/.npz or CIFAR-100_human.pt/.npz")
    c = data.num_classes
    clean = _check_labels(data.y_train, c, f"{data.name} training labels").cpu()
    seed = int(cfg.noise_seed)
    note = ""

    def _device():
        if device is not None:
            return torch.device(device)
        from .engine import resolve_device

        try:
            return resolve_device(cfg.device)
        except RuntimeError as e:
            raise NoiseError(str(e)) from None

    if kind == "none":
        noisy, target, seed_out = clean.clone(), 0.0, None
    elif kind == "symmetric":
        noisy, target, seed_out = symmetric(clean, c, rate, seed), rate, seed
    elif kind == "asymmetric":
        mapping = _default_mapping(c)
        noisy, target, seed_out = asymmetric(clean, c, rate, seed, mapping), rate, seed
        note = "target rate applies to each mapped class " + ", ".join(f"{s}->{t}" for s, t in mapping.items())
    elif kind == "ptd":
        x = data.x_train.to(_device())
        noisy = ptd(x, clean, c, rate, seed, std=cfg.ptd_std, mean=data.mean, std_pix=data.std).cpu()
        target, seed_out = rate, seed
    elif kind == "classification":
        probs = average_softmax(data, cfg, _device(), progress=progress)
        noisy, target, seed_out = classification_based(clean, c, rate, probs).cpu(), rate, seed
    elif kind == "cifar-n":
        from .data.cifar_n import load_cifar_n

        noisy = _check_labels(load_cifar_n(cfg.cifar_n_file, cfg.cifar_n, clean_labels=clean), c,
                              f"cifar-n {cfg.cifar_n}").cpu()
        target, seed_out, note = None, None, f"CIFAR-N {cfg.cifar_n} labels from {cfg.cifar_n_file}"
    else:  # file
        _, noisy = load_label_csv(cfg.noise_file, c, clean)
        target, seed_out, note = None, None, f"labels from {cfg.noise_file}"
    return noisy, report(clean, noisy, c, kind, target, seed_out, note)


# --------------------------------------------------------------------------
# CLI: hallnll noise
# --------------------------------------------------------------------------
def cli(argv=None) -> int:
    """``hallnll noise [PARAMS.yaml] [--set key=value ...] --out FILE.csv``."""
    from .config import load_config
    from .data import load_dataset

    ap = argparse.ArgumentParser(
        prog="hallnll noise",
        description="Make the noisy training labels of a run (cfg.noise), print their noise "
                    "report and write them as a label,label_noisy CSV.")
    ap.add_argument("params", nargs="?", default=None, help="params YAML (default: built-in defaults)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting, e.g. --set noise=ptd --set noise_rate=0.2 (repeatable)")
    ap.add_argument("--out", required=True, metavar="FILE.csv", help="where to write the labels")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.params, args.overrides)
        out = Path(args.out).expanduser()
        if out.is_dir():
            raise NoiseError(f"--out {str(out)!r} is a folder; give a file name such as labels.csv")
        data = load_dataset(cfg)
        noisy, rep = make_noisy_labels(cfg, data, progress=cfg.progress and not args.no_progress)
        print(rep.summary())
        save_label_csv(out, data.y_train, noisy)
        print(f"wrote {out} ({len(noisy)} labels)")
    except (ConfigError, NoiseError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # python -m hallnll.noise
    sys.exit(cli())
