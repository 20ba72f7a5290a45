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
    """bf16 autocast on ``device`` when ``bf16`` (callers decide where it is wanted:
    :func:`use_bf16`); a no-op otherwise."""
    if bf16 and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_bf16(cfg, device: torch.device) -> bool:
    """Whether ``cfg`` asks for bf16 autocast (and channels_last) on ``device``:
    on CUDA with ``bf16``; on the CPU only with ``cpu_bf16`` as well."""
    return bool(cfg.bf16) and (device.type == "cuda" or (device.type == "cpu" and bool(cfg.cpu_bf16)))


def make_optimizer(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def step_lr(base_lr: float, epoch: int, decay_epoch: int) -> float:
    """The paper's schedule: lr divided by 10 at ``decay_epoch`` (0-based epochs)."""
    return base_lr / 10.0 if epoch >= decay_epoch else base_lr


def ce_epoch(model, images: DeviceImages, labels: torch.Tensor, opt, batch_size: int, generator,
             padding: int = 4, hflip: bool = True, bf16: bool = False, step_fn=None) -> torch.Tensor:
    """One epoch of cross-entropy on (augmented) images and the given labels.

    Returns the mean loss as a 0-dim device tensor (read it once per epoch).
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
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach().float()
        if step_fn is not None:
            step_fn()
    return total / steps


@torch.no_grad()
def recalibrate_bn(model, images: DeviceImages, n_images: int, batch_size: int, generator,
                   padding: int = 4, hflip: bool = True, bf16: bool = False) -> None:
    """Re-estimate every BatchNorm layer's running statistics ("precise BN").

    Resets them and averages the batch statistics of ``n_images`` randomly
    chosen, augmented (crop/flip as in training, never mixed) training images
    in batches of ``batch_size``, in train mode, under the current weights:
    :func:`torch.optim.swa_utils.update_bn` on batches from the device.
    Whole batches only (the last partial one is dropped unless it is the only
    one), so every batch statistic has the training batch's size.
    """
    from torch.optim.swa_utils import update_bn

    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    n = len(images)
    k = min(n, n_images)
    idx = torch.randperm(n, device=images.device, generator=generator)[:k]
    steps = max(1, k // batch_size)

    batches = (images.batch(idx[i * batch_size:(i + 1) * batch_size], True, padding, hflip, generator)
               for i in range(steps))
    with autocast(images.device, bf16):
        update_bn(batches, model)


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


@torch.no_grad()
def accuracy_batch_stats(model, images: DeviceImages, labels: torch.Tensor, batch_size: int = 1024,
                         bf16: bool = False) -> torch.Tensor:
    """Top-1 accuracy with BatchNorm in train mode: every test batch normalised by
    its own statistics instead of the running averages. A diagnostic: far above
    :func:`accuracy` means the running averages do not describe the weights.
    The running averages are left exactly as they were."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0  # running = 1 * running + 0 * batch: unchanged
    was_training = model.training
    model.train()
    correct = torch.zeros((), device=images.device)
    try:
        for idx, x in images.iter_batches(batch_size):
            with autocast(images.device, bf16):
                out = model(x)
            correct += (out.argmax(1) == labels[idx]).sum()
    finally:
        for m, (mom, nbt) in zip(bns, saved):
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)
        model.train(was_training)
    return correct / len(images)


def num_iters(n_labeled: int, batch_size: int) -> int:
    """Iterations of an SSL epoch (I_max of Alg. 1): one pass over the labeled set."""
    return max(1, math.ceil(n_labeled / batch_size))
