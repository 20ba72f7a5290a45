"""Training primitives shared by every step: device choice, autocast, the
optimiser, one cross-entropy epoch (the warm-up of Alg. 1, lines 2-3) and a large-batch
evaluation pass that returns logits and features f_theta(x).

No host synchronisation inside the iteration loops: losses are summed on the
device and read once per epoch. Every training step has the same batch shape
(the ragged last batch of an epoch is dropped), so compiled steps and CUDA
graphs see one shape.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .data.gpu import DeviceImages, augment_draws
from .levers import sgd_options


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from .config import ConfigError

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"config: device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config: device={name!r} but CUDA is not available here; use device=cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"config: device={name!r} but this machine has {torch.cuda.device_count()} GPU(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); set CUDA_VISIBLE_DEVICES or another index")
    return dev


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16`` (callers decide where it is wanted:
    :func:`hallnll.levers.use_bf16`); a no-op otherwise."""
    if bf16 and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(params, lr: float, momentum: float, weight_decay: float, impl: str = "default") -> torch.optim.Optimizer:
    """SGD with momentum and weight decay; ``impl`` is the ``sgd_impl`` lever
    (:func:`hallnll.levers.sgd_options`: the same update)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **sgd_options(impl))


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on ``device``; to CUDA from pinned memory without blocking the host."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


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


def ce_loss(model, images: DeviceImages, idx: torch.Tensor, draws: tuple, labels: torch.Tensor, padding: int = 4,
            bf16: bool = False, entropy_penalty: float = 0.0) -> torch.Tensor:
    """One warm-up step's loss: the augmented batch ``idx`` (random numbers
    ``draws`` from :func:`hallnll.data.gpu.augment_draws`), cross-entropy
    against ``labels[idx]``, plus ``entropy_penalty`` times :func:`neg_entropy`
    when it is > 0. A pure function of tensors (compilable)."""
    x = images.augmented(idx, draws, padding)
    with autocast(images.device, bf16):
        out = model(x)
        loss = F.cross_entropy(out, labels[idx])
    if entropy_penalty:
        loss = loss + entropy_penalty * neg_entropy(out)
    return loss


def ce_epoch(model, images: DeviceImages, labels: torch.Tensor, opt, batch_size: int, generator,
             padding: int = 4, hflip: bool = True, bf16: bool = False, loss_fn=None,
             entropy_penalty: float = 0.0, part=None) -> torch.Tensor:
    """One epoch of cross-entropy on (augmented) images and the given labels.

    ``n // batch_size`` steps of ``batch_size`` images (the ragged last batch
    is dropped, so every step has the same shape); one step of all ``n``
    images when ``n < batch_size``. ``loss_fn`` replaces :func:`ce_loss`
    (e.g. its compiled version).

    With ``entropy_penalty`` w > 0 the loss of each batch is
    ``CE + w * neg_entropy(logits)``: DivideMix's warm-up for asymmetric noise
    (``L = CEloss + conf_penalty(outputs)``, w = 1), which keeps the network
    from growing over-confident on the noisy labels before the loss GMM
    separates them. ``entropy_penalty == 0`` runs plain cross-entropy.

    ``part`` (DDP, :func:`hallnll.distributed.batch_part`): ``part(b)`` is this
    rank's slice of each global batch of ``b``, drawn (with its augmentation)
    alike on every rank. Returns the mean loss (the penalty included; this
    rank's part under DDP) as a 0-dim device tensor (read it once per epoch).
    """
    model.train()
    loss_fn = loss_fn or ce_loss
    n = len(images)
    perm = torch.randperm(n, device=images.device, generator=generator)
    total = torch.zeros((), device=images.device)
    steps = max(1, n // batch_size) if n >= batch_size else 1
    if images.streamed:  # decoded ahead by the workers (under DDP: this rank's part of each batch)
        bs = [perm[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
        images.plan([b[part(len(b))] for b in bs] if part is not None else bs)
    for i in range(steps):
        idx = perm[i * batch_size:(i + 1) * batch_size]
        draws = augment_draws(len(idx), padding, hflip, generator, images.device)
        if part is not None:  # DDP: this rank's share of the global batch
            s = part(len(idx))
            idx, draws = idx[s], tuple(d[s] if d is not None else None for d in draws)
        loss = loss_fn(model, images, idx, draws, labels, padding, bf16, entropy_penalty)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach().float()
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
    if images.streamed:  # decoded ahead by the workers
        images.plan([idx[i * batch_size:(i + 1) * batch_size] for i in range(steps)])
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
