"""Training primitives shared by every step: device choice, autocast, the
optimiser, one cross-entropy epoch (the warm-up of Alg. 1, lines 2-3) and a
large-batch evaluation pass that returns logits and features f_theta(x).

No host synchronisation inside the iteration loops: losses are summed on the
device and read once per epoch.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .data.gpu import DeviceImages


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available here; use device=cpu or auto")
    return dev


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; a no-op elsewhere (the CPU path is fp32)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def step_lr(base_lr: float, epoch: int, decay_epoch: int) -> float:
    """The paper's schedule: lr divided by 10 from ``decay_epoch`` on (0-based epochs); 0: no decay."""
    return base_lr / 10.0 if 0 < decay_epoch <= epoch else base_lr


def neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """DivideMix's confidence penalty ``NegEntropy``: ``mean_i sum_c p_ic log p_ic``
    (the negative entropy of the softmax, in [-log C, 0]; adding it to a loss
    rewards spread-out predictions). Computed from ``log_softmax`` in fp32, so a
    probability that underflows to 0 gives 0, not NaN."""
    logp = F.log_softmax(logits.float(), dim=1)
    return (logp.exp() * logp).sum(1).mean()


def ce_epoch(model, images: DeviceImages, labels: torch.Tensor, opt, batch_size: int, generator,
             padding: int = 4, hflip: bool = True, bf16: bool = False, step_fn=None,
             entropy_penalty: float = 0.0) -> torch.Tensor:
    """One epoch of cross-entropy on (augmented) images and the given labels.

    With ``entropy_penalty`` w > 0 the loss of each batch is
    ``CE + w * neg_entropy(logits)``: DivideMix's warm-up for asymmetric noise
    (``L = CEloss + conf_penalty(outputs)``, w = 1), which keeps the network
    from growing over-confident on the noisy labels before the loss GMM
    separates them. ``entropy_penalty == 0`` runs plain cross-entropy (the
    same operations as without the argument).

    Returns the mean loss (the penalty included) as a 0-dim device tensor
    (read it once per epoch).
    """
    model.train()
    n = len(images)
    perm = torch.randperm(n, device=images.device, generator=generator)
    total = torch.zeros((), device=images.device)
    steps = max(1, n // batch_size) if n >= batch_size else 1
    for i in range(steps):
        idx = perm[i * batch_size:(i + 1) * batch_size]
        x = images.batch(idx, augment=True, padding=padding, hflip=hflip, generator=generator)
        y = labels[idx]
        with autocast(images.device, bf16):
            out = model(x)
            loss = F.cross_entropy(out, y)
        if entropy_penalty:
            loss = loss + entropy_penalty * neg_entropy(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach().float()
        if step_fn is not None:
            step_fn()
    return total / steps


@torch.no_grad()
def predict(model, images: DeviceImages, batch_size: int = 1024, bf16: bool = False, features: bool = True):
    """Logits ``[N, C]`` and features ``[N, d]`` (fp32) of un-augmented images, eval mode."""
    model.eval()
    logits, feats = [], []
    for _, x in images.iter_batches(batch_size):
        with autocast(images.device, bf16):
            f = model.features(x)
            out = model.classifier(f)
        logits.append(out.float())
        if features:
            feats.append(f.float())
    model.train()
    return torch.cat(logits), (torch.cat(feats) if features else None)


@torch.no_grad()
def accuracy(model, images: DeviceImages, labels: torch.Tensor, batch_size: int = 1024, bf16: bool = False) -> torch.Tensor:
    """Top-1 accuracy as a 0-dim device tensor."""
    logits, _ = predict(model, images, batch_size, bf16, features=False)
    return (logits.argmax(1) == labels).float().mean()


def num_iters(n_labeled: int, batch_size: int) -> int:
    """Iterations of an SSL epoch (I_max of Alg. 1): one pass over the labeled set."""
    return max(1, math.ceil(n_labeled / batch_size))
