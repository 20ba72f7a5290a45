"""The clean-label classifier of classification-based noise (Chen et al., 2021):
a CNN trained on the clean labels, its softmax averaged over the epochs.

The one part of :mod:`hallnll.noise` that trains a model (with
:mod:`hallnll.engine`); :func:`hallnll.noise.generators.classification_based`
turns its output into noisy labels.
"""
from __future__ import annotations

import torch

from ..data.gpu import DeviceImages
from ..data.sources import ImageData
from ..engine import autocast, ce_epoch, make_optimizer, predict, resolve_device, set_lr
from ..models import build_model
from .generators import NoiseError, check_labels


def noise_device(cfg, device=None) -> torch.device:
    """Where noise is computed: ``device``, else ``cfg.device`` resolved (auto: CUDA when there is one)."""
    if device is not None:
        return torch.device(device)
    try:
        return resolve_device(cfg.device)
    except RuntimeError as e:
        raise NoiseError(str(e)) from None


def cbased_lr(cfg, epoch: int) -> float:
    """The clean-label CNN's learning rate in (0-based) ``epoch``:
    ``cbased_lr * cbased_lr_gamma ** (number of milestones <= epoch)``.

    Chen et al.'s CIFAR-10 script (``cifar10_gen_dependent.py``,
    ``learning_rate``): 0.1 in epochs 1-60, 0.02 in 61-120, 0.004 in 121-150
    (1-based), i.e. milestones [60, 120] and gamma 0.2 here.
    """
    passed = sum(1 for m in cfg.cbased_lr_milestones if epoch >= int(m))
    return float(cfg.cbased_lr) * float(cfg.cbased_lr_gamma) ** passed


@torch.no_grad()
def _softmax_pass(model, images: DeviceImages, batch_size: int, bf16: bool, augmented: bool, generator,
                  padding: int, hflip: bool) -> torch.Tensor:
    """Softmax ``[N, C]`` of every training image in eval mode, in order; one random
    crop/flip per image when ``augmented`` (the training transform), else the plain images."""
    if not augmented:
        logits, _ = predict(model, images, batch_size, bf16, features=False)
        return torch.softmax(logits.float(), dim=1)
    model.eval()
    out = []
    for idx, _ in images.iter_batches(batch_size):
        x = images.batch(idx, augment=True, padding=padding, hflip=hflip, generator=generator)
        with autocast(images.device, bf16):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1))
    model.train()
    return torch.cat(out)


def average_softmax(data: ImageData, cfg, device=None, progress: bool = True, on_epoch=None) -> torch.Tensor:
    """The per-sample softmax of a clean-label CNN, averaged over its training epochs.

    Chen et al. (2021), ``cifar10_gen_dependent.py`` of chenpf1025/IDN: a
    Wide-ResNet-28-10 trained on the clean CIFAR-10 labels for 150 epochs
    (SGD, batch 128, momentum 0.9, weight decay 5e-4, lr 0.1 times 0.2 after
    epochs 60 and 120; random crop 4 + flip); after every epoch (right after
    the test pass, so in eval mode) the softmax of every training image *as
    the training loader gives it* — one fresh random crop/flip per image and
    epoch — is added up, and the sum divided by the epochs. (Their MNIST
    script trains 20 epochs at a constant lr 0.01, momentum 0.5, on images
    without augmentation.)

    Here: ``build_model(cfg.arch, C, in_channels)`` (the run's model, not
    their WRN-28-10) trains ``cfg.cbased_epochs`` epochs of cross-entropy
    with SGD (cfg.momentum, cfg.weight_decay, cfg.batch_size) at
    :func:`cbased_lr` (``cbased_lr``, ``cbased_lr_milestones``,
    ``cbased_lr_gamma``) and cfg's crop/flip; after each epoch the eval-mode
    softmax of the training images is added, on one augmented view each
    when ``cfg.cbased_softmax_augmented`` (their CIFAR-10 script), on the
    plain images otherwise (their MNIST script, which has no augmentation).
    The Config defaults are their CIFAR-10 values; the digits params file
    sets a short constant-lr run of its own. One difference: their script
    builds a new SGD every epoch to set the lr, which restarts the momentum
    buffer; here one optimiser runs throughout and its lr is set per epoch.

    ``on_epoch(epoch, lr, softmax)``, if given, is called after each epoch
    with the 0-based epoch, its lr and that epoch's softmax ``[N, C]`` (the
    returned mean is their average). Returns the mean ``[N, C]`` (float32,
    on the device).

    Seeded by ``cfg.noise_seed``: the model is initialised under
    ``torch.random.fork_rng`` (the caller's global RNG state is left as it
    was) and batches/augmentation use a seeded generator. On CUDA, cuDNN
    kernels may still make two runs differ in the last bits.
    """
    from tqdm.auto import tqdm

    epochs = int(cfg.cbased_epochs)  # at least 1 for noise=classification (Config.validate)
    dev = noise_device(cfg, device)
    c = data.num_classes
    cuda = dev.type == "cuda"
    channels_last = bool(getattr(cfg, "channels_last", False)) and cuda
    bf16 = bool(cfg.bf16) and cuda
    images = DeviceImages(data.x_train, data.mean, data.std, dev, channels_last=channels_last)
    labels = check_labels(data.y_train, c, "training labels").to(dev)
    fork = [dev.index if dev.index is not None else torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(int(cfg.noise_seed))
        model = build_model(cfg.arch, c, data.in_channels, getattr(cfg, "pretrained", "")).to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(model.parameters(), cbased_lr(cfg, 0), cfg.momentum, cfg.weight_decay)
        gen = torch.Generator(device=dev).manual_seed(int(cfg.noise_seed))
        total = torch.zeros(len(images), c, dtype=torch.float32, device=dev)
        bar = tqdm(range(epochs), desc="c-based noise: clean-label CNN", unit="epoch", disable=not progress)
        for epoch in bar:
            lr = cbased_lr(cfg, epoch)
            set_lr(opt, lr)
            loss = ce_epoch(model, images, labels, opt, cfg.batch_size, generator=gen,
                            padding=cfg.crop_padding, hflip=cfg.hflip, bf16=bf16)
            probs = _softmax_pass(model, images, cfg.eval_batch_size, bf16, bool(cfg.cbased_softmax_augmented),
                                  gen, cfg.crop_padding, cfg.hflip)
            total += probs
            if on_epoch is not None:
                on_epoch(epoch, lr, probs)
            if progress:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")  # one read per epoch
    return total / epochs
