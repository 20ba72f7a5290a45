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
from ..engine import ce_epoch, make_optimizer, predict, resolve_device
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
