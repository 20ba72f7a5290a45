"""GPU-resident images and batched augmentation (the airbench way).

The whole training set lives on the device as uint8 ``[N, C, H, W]``. A batch
is gathered by index, augmented as tensor ops on the whole batch (random crop
with zero padding, horizontal flip) and normalised: no per-image Python, no
DataLoader workers, no host round-trip.
"""
from __future__ import annotations

import torch


class DeviceImages:
    """uint8 images on ``device`` plus the per-channel normalisation."""

    streamed = False  # resident (hallnll.data.stream.StreamImages: decoded per batch from disk)

    def __init__(self, x_uint8: torch.Tensor, mean, std, device, channels_last: bool = False):
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {x_uint8.dtype} {tuple(x_uint8.shape)}")
        self.device = torch.device(device)
        self.x = x_uint8.to(self.device, non_blocking=True)
        c = self.x.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1) * 255.0
        self.channels_last = channels_last

    def __len__(self):
        return self.x.shape[0]

    def subset(self, idx: torch.Tensor, seed=None) -> "DeviceImages":
        """The images at ``idx`` (a per-epoch draw, ``Config.epoch_batches``), on the same device."""
        out = object.__new__(DeviceImages)
        out.device, out.x, out.mean, out.std, out.channels_last = self.device, self.x[idx.to(self.device)], \
            self.mean, self.std, self.channels_last
        return out

    def plan(self, batches, train: bool = True, views: int = 1) -> None:
        """Nothing to do: the images are already on the device (the streamed path,
        :class:`hallnll.data.stream.StreamImages`, decodes announced batches ahead;
        the loops announce them only where ``streamed``)."""

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        """Float batch in the memory format the run asks for: channels_last when it is
        on, contiguous NCHW otherwise. Stated explicitly, because the augmented gather
        (:func:`augment_apply`) returns an NCHW view with channels-last strides, and
        elementwise ops keep those strides: oneDNN's AVX2 convolution kernels crash on
        such a batch for narrow models (width 4; the any-CPU issue)."""
        out = (xb.float() - self.mean) / self.std
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return out.contiguous(memory_format=fmt)

    def batch(self, idx: torch.Tensor, augment: bool = False, padding: int = 4, hflip: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalised float batch of the images at ``idx`` (optionally augmented)."""
        xb = self.x[idx]
        if augment:
            xb = augment_batch(xb, padding, hflip, generator)
        return self.normalize(xb)

    def augmented(self, idx: torch.Tensor, draws: tuple, padding: int = 4) -> torch.Tensor:
        """``batch(idx, augment=True, ...)`` with the random numbers drawn beforehand
        (:func:`augment_draws`): no generator inside, so it can be compiled."""
        return self.normalize(augment_apply(self.x[idx], draws, padding))

    def iter_batches(self, batch_size: int):
        """Plain (un-augmented) batches in order, for evaluation."""
        n = len(self)
        for s in range(0, n, batch_size):
            idx = torch.arange(s, min(s + batch_size, n), device=self.device)
            yield idx, self.normalize(self.x[idx])


def augment_draws(b: int, padding: int = 4, hflip: bool = True, generator: torch.Generator | None = None,
                  device=None) -> tuple:
    """The random numbers of :func:`augment_batch` for ``b`` images, drawn in its
    order: crop offsets ``oy``, ``ox`` (when ``padding``), then the flips (when ``hflip``)."""
    oy = ox = flip = None
    if padding > 0:
        oy = torch.randint(0, 2 * padding + 1, (b,), device=device, generator=generator)
        ox = torch.randint(0, 2 * padding + 1, (b,), device=device, generator=generator)
    if hflip:
        flip = torch.rand(b, device=device, generator=generator) < 0.5
    return oy, ox, flip


def augment_apply(xb: torch.Tensor, draws: tuple, padding: int = 4) -> torch.Tensor:
    """Random crop and flip of :func:`augment_batch` with the given :func:`augment_draws`."""
    oy, ox, flip = draws
    b, c, h, w = xb.shape
    dev = xb.device
    if padding > 0:
        padded = torch.nn.functional.pad(xb, (padding, padding, padding, padding))
        rows = (oy[:, None] + torch.arange(h, device=dev)[None])  # [B, H]
        cols = (ox[:, None] + torch.arange(w, device=dev)[None])  # [B, W]
        if flip is not None:
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        bi = torch.arange(b, device=dev)[:, None, None]
        # padded[b, :, rows[b, i], cols[b, j]] -> [B, H, W, C]; returned as an NCHW
        # view with channels-last strides: DeviceImages.normalize sets the format
        out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2)
    if flip is not None:
        return torch.where(flip[:, None, None, None], xb.flip(3), xb)
    return xb


def augment_batch(xb: torch.Tensor, padding: int = 4, hflip: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding ``padding``) and horizontal flip, per image, batched.

    Equivalent to torchvision's ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip()``
    applied image by image, but as one gather on the whole batch
    (:func:`augment_draws` then :func:`augment_apply`).
    """
    return augment_apply(xb, augment_draws(xb.shape[0], padding, hflip, generator, xb.device), padding)
