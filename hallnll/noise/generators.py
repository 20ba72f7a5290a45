"""The label-noise generators of §4.1: pure functions of clean labels (and
images, or a classifier's averaged probabilities) and a seed.

- :func:`symmetric`: instance-independent uniform flips to another class;
- :func:`asymmetric`: class-pair flips, DivideMix's CIFAR-10 map (Li et al.,
  "DivideMix: Learning with Noisy Labels as Semi-supervised Learning", ICLR 2020);
- :func:`ptd`: part-dependent instance-dependent noise of Xia et al.,
  "Part-dependent Label Noise: Towards Instance-dependent Label Noise",
  NeurIPS 2020 (their public ``get_instance_noisy_label``), the paper's
  "PTD-20%/40%";
- :func:`classification_based`: the classification-based IDN of Chen et al.,
  "Beyond Class-Conditional Assumption: A Primary Attempt to Combat
  Instance-Dependent Label Noise", AAAI 2021: given the softmax of a
  clean-label CNN averaged over its epochs (made by
  :func:`hallnll.noise.classifier.average_softmax`), the most confusable
  samples move to their most likely wrong class.

Every generator is deterministic for a seed: random numbers are drawn from a
seeded CPU ``torch.Generator`` (so a label set does not depend on the
device), and the arithmetic runs on the device of the input tensors. Each
checks its own arguments (these functions are public) and raises
:class:`NoiseError` saying what to change. Nothing here trains a model or
reads a file.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

# DivideMix's CIFAR-10 asymmetric map: truck -> automobile, bird -> airplane,
# deer -> horse, cat <-> dog (dataloader_cifar.py, ``self.transition``).
DIVIDEMIX_CIFAR10_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


class NoiseError(ValueError):
    """A noise setting or a label file is unusable; the message says how to fix it."""


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------
def _check_rate(rate) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise NoiseError(f"noise_rate={rate!r} is not a number; use a value in [0, 1]") from None
    if not (math.isfinite(r) and 0.0 <= r <= 1.0):
        raise NoiseError(f"noise_rate={rate!r} must lie in [0, 1] (0.4 means 40% of the labels are wrong)")
    return r


def check_labels(y, num_classes: int, what: str) -> torch.Tensor:
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
    clean = check_labels(clean, num_classes, "symmetric noise")
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


def default_mapping(num_classes: int) -> dict:
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
    clean = check_labels(clean, num_classes, "asymmetric noise")
    mapping = default_mapping(num_classes) if mapping is None else dict(mapping)
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
def ptd(x_uint8: torch.Tensor, clean: torch.Tensor, num_classes: int, rate: float, seed: int,
        std: float = 0.1) -> torch.Tensor:
    """Part-dependent (instance-dependent) noise of Xia et al. (NeurIPS 2020).

    A vectorised port of their public ``get_instance_noisy_label``:

    1. per-sample flip rate ``q_i ~ N(rate, std)`` truncated to [0, 1];
    2. ``W ~ randn(C, D, C)``, D the flattened image size;
    3. ``A_i = x_i @ W[y_i]`` with ``x_i`` the **raw** pixels 0..255 as floats,
       flattened in (C, H, W) order, as Xia et al. feed them (their
       ``data.py`` passes ``torch.from_numpy(train_images).float()``, not the
       normalised tensors of the training transform);
       ``A_i[y_i] = -inf``;
    4. ``p_i = q_i * softmax(A_i)``, ``p_i[y_i] += 1 - q_i``;
       ``noisy_i ~ Categorical(p_i)``.

    So each sample keeps its label with probability ``1 - q_i`` and otherwise
    moves to a class chosen by a random linear function of its pixels: the
    noise depends on the image, not only on the class. Raw pixels are all
    positive (mean about 120 on CIFAR-10), so ``x_i @ W[y_i]`` is dominated by
    a term every image of class ``y_i`` shares, roughly ``mean(x) *
    W[y_i].sum(0)``, and the logits are thousands apart: a class's flips
    concentrate on the few wrong classes that term favours, the image
    deciding among them. That is the structure of the original; normalised
    pixels (mean 0) remove the shared term and spread the flips over almost
    all classes. CIFAR-10 (JPEG q75 copy), 40%, seeds 1-5, means
    (``python benchmarks/ptd_structure.py --data-root /tmp/c10``; the
    statistics of :meth:`NoiseReport.structure`): largest transition entry
    0.376 here, 0.381 for a port of Xia et al.'s code, 0.151 for that port
    fed normalised pixels; flips of a class over 2.45 / 2.51 / 7.63
    effective destination classes; noisy classes with a majority of wrong
    labels 2.6 / 2.2 / 0.2.

    The realised rate is ``rate`` in expectation (binomial spread;
    truncation shifts the mean of ``q`` near 0 and 1). ``rate == 0`` gives
    no flips; ``std == 0`` uses ``q_i = rate``.

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
    clean = check_labels(clean, num_classes, "ptd noise")
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

    counts = torch.bincount(clean, minlength=c).tolist()  # the one host sync: segment sizes
    order = torch.argsort(clean, stable=True)
    noisy = clean.clone()
    start = 0
    for k in range(c):
        wk = W[k].double()  # [D, C]
        for a in range(start, start + counts[k], chunk):
            idx = order[a:min(a + chunk, start + counts[k])]
            xb = x_uint8[idx].reshape(-1, d).double()  # raw 0..255, as Xia et al.
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
    clean = check_labels(clean, num_classes, "classification-based noise")
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
