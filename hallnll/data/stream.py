"""Images streamed from disk: data that does not fit in memory (Clothing1M, a large folder).

The resident path (:class:`hallnll.data.gpu.DeviceImages`) keeps the whole
training set on the device as uint8. Clothing1M's 1M images at 224 px would be
~150 GB, so here only the *paths* are held (one bytes array, ~60 B an image)
and every batch is read and decoded by DataLoader workers
(``torchvision.io.decode_image``), resized and cropped there, and sent to the
device as one uint8 batch, where it is normalised. Host and device memory
hold a few batches in flight (``workers x prefetch``), whatever N is. The
workers are started once, at a run's first request, and serve all its splits
(:class:`DecodePool`).

:class:`StreamImages` has the interface of :class:`DeviceImages` that the
steps of a run use (``len``, ``device``, ``batch``, ``augmented``,
``iter_batches``, ``subset``) plus ``plan``: a step that knows its batches in
advance (every training loop of :mod:`hallnll.engine` and :mod:`hallnll.ssl`
draws its permutation first) announces them, and the workers decode them
ahead in that order. A request that was not planned is decoded in the calling
process (same pixels, no prefetch). ``DeviceImages.plan`` does nothing, so the
run's steps are the same code for both.

Two transforms (:class:`ImagePaths` ``mode``):

- ``dividemix`` (Clothing1M): DivideMix's ``transform_train`` / ``transform_test``
  (dataloader_clothing1M.py): shorter side resized to ``resize`` (256), then a
  random ``crop`` (224) crop and a horizontal flip for training, the centre
  crop for evaluation, done in the worker (the images differ in size, so they
  cannot be batched before). The device-side crop draws of the resident path
  are not used; the worker's draws come from a per-request seed taken from the
  run's seed, so they do not depend on the number of workers.
- ``square`` (a user's folder above ``Config.stream_above_gb``): the worker
  resizes to ``crop`` x ``crop`` as the resident folder path does, and the
  crop-with-padding and flip are then applied on the device with the run's
  draws, exactly as on the resident path.

Where the JPEGs are decoded (``Config.jpeg_decode``, :func:`jpeg_decoder`):

- ``workers``: each worker reads and decodes its batch on the CPU
  (libjpeg-turbo) and transforms it there, as above;
- ``device``: the workers only read each batch's file bytes; the batch is
  decoded in one call of ``torchvision.io.decode_jpeg(..., device=run's
  device)`` (nvJPEG on CUDA) and transformed there by the same function,
  with the same per-request crop/flip draws (files that are not JPEG are
  decoded on the CPU and moved). Why: a CPU worker decodes and transforms
  40-300 Clothing1M-sized JPEGs (~440x490 px) a second (the development CPU,
  by its load; benchmarks/README.md), so a machine's 8-16 workers can fall
  below the rate at which an H100/H200 trains two ResNet-50s, and the CPU,
  not the GPU, would bound the epoch; reading bytes costs the workers almost
  nothing. Which decoder is faster on a given GPU machine is what
  ``benchmarks/clothing1m_loader.py throughput --device cuda --decoder
  workers|device`` measures (owed: no GPU was lent).
- ``auto`` (default): ``device`` on CUDA, ``workers`` elsewhere (a CPU has no
  faster decoder than its workers).

The two decoders give the same crops and flips; their pixels differ only by
the decoder's IDCT and upsampling (nvJPEG vs libjpeg-turbo) and the resize
kernel's device, a few levels of 255 at most (on the CPU the two paths are the
same library and give identical pixels: tests/test_clothing1m.py).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .gpu import augment_apply, augment_batch

# torchvision >= 0.29 warns on every decode that its image decoding is deprecated in favour
# of TorchCodec; it still works (torch 2.11 .. 2.14), so the one warning is silenced here
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

#: Clothing1M's per-channel mean and std (DivideMix's Normalize, dataloader_clothing1M.py).
CLOTHING1M_MEAN = (0.6959, 0.6537, 0.6371)
CLOTHING1M_STD = (0.3113, 0.3192, 0.3214)


class ImagePaths:
    """Image files of a split, not decoded: what :class:`ImageData` holds in place of
    a uint8 tensor for streamed data. Indexing (a slice, an index array or tensor)
    gives the sub-list; ``shape`` is that of the decoded batch, ``[N, 3, crop, crop]``."""

    def __init__(self, paths, crop: int = 224, resize: int = 256, mode: str = "dividemix"):
        self.paths = paths if isinstance(paths, np.ndarray) and paths.dtype.kind == "S" else \
            np.array([str(p).encode() for p in paths], dtype=bytes)
        if mode not in ("dividemix", "square"):
            raise ValueError(f"ImagePaths mode {mode!r}: use dividemix or square")
        self.crop, self.resize, self.mode = int(crop), int(resize), mode

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple:
        return (len(self.paths), 3, self.crop, self.crop)

    def __getitem__(self, idx) -> "ImagePaths":
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        return ImagePaths(self.paths[idx], self.crop, self.resize, self.mode)

    def path(self, i: int) -> str:
        return self.paths[i].decode()


#: Config.jpeg_decode's choices (see the module docstring)
JPEG_DECODERS = ("auto", "workers", "device")


def jpeg_decoder(setting: str, device) -> str:
    """Where a run's JPEGs are decoded: ``workers`` (on the CPU, in the DataLoader workers)
    or ``device`` (one ``decode_jpeg`` per batch on the run's device); ``auto`` picks
    ``device`` on CUDA only."""
    if setting not in JPEG_DECODERS:
        raise ValueError(f"jpeg_decode {setting!r}: use one of {', '.join(JPEG_DECODERS)}")
    if setting == "auto":
        return "device" if torch.device(device).type == "cuda" else "workers"
    return setting


def decode(path: str, crop: int, resize: int, mode: str, train: bool, views: int,
           gen: torch.Generator | None) -> torch.Tensor:
    """One image as ``views`` uint8 tensors ``[views, 3, crop, crop]`` (see the module docstring)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    return transform(decode_image(read_file(path), mode=ImageReadMode.RGB), crop, resize, mode, train, views, gen)


def decode_batch(raw, device, crop: int, resize: int, mode: str, train: bool, views: int,
                 seed: int) -> torch.Tensor:
    """File bytes of a request (uint8 1-D tensors, or ``{"bytes", "lengths"}`` as :class:`_Decode`
    gives them) decoded on ``device``, the JPEGs by one
    ``torchvision.io.decode_jpeg`` call (nvJPEG on CUDA), and transformed there with the
    request's draws, image by image as :class:`_Decode` does: ``[views, B, 3, crop, crop]``."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    device = torch.device(device)
    if isinstance(raw, dict):
        raw = list(torch.split(raw["bytes"], raw["lengths"].tolist()))
    is_jpeg = [len(b) > 2 and int(b[0]) == 0xFF and int(b[1]) == 0xD8 for b in raw]
    jpegs = [b for b, j in zip(raw, is_jpeg) if j]
    dec = iter(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device) if jpegs else [])
    gen = torch.Generator().manual_seed(int(seed))
    imgs = [next(dec) if j else decode_image(b, mode=ImageReadMode.RGB).to(device) for b, j in zip(raw, is_jpeg)]
    return torch.stack([transform(im, crop, resize, mode, train, views, gen) for im in imgs], 1)


def transform(img: torch.Tensor, crop: int, resize: int, mode: str, train: bool, views: int,
              gen: torch.Generator | None) -> torch.Tensor:
    """A decoded uint8 ``[3, H, W]`` image as ``views`` transformed views ``[views, 3, crop, crop]``,
    on the image's device (the crop/flip draws from ``gen``, on the CPU)."""
    from torchvision.transforms.v2 import functional as TF

    # resized in the channels-last layout: torch's antialiased uint8 kernel is ~1.8x faster there
    img = img.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    if mode == "square":
        return TF.resize(img, [crop, crop], antialias=True)[0].expand(views, -1, -1, -1)
    img = TF.resize(img, resize, antialias=True)[0]  # the shorter side to `resize`, as transforms.Resize(256)
    h, w = img.shape[-2:]
    if not train:
        return TF.center_crop(img, [crop, crop]).expand(views, -1, -1, -1)
    out = []
    for _ in range(views):  # DivideMix: one decode, `views` independent transforms
        y = int(torch.randint(0, h - crop + 1, (1,), generator=gen)) if h > crop else 0
        x = int(torch.randint(0, w - crop + 1, (1,), generator=gen)) if w > crop else 0
        v = TF.crop(img, y, x, crop, crop)  # pads with zeros when the image is smaller (RandomCrop would fail)
        if bool(torch.rand(1, generator=gen) < 0.5):
            v = v.flip(-1)
        out.append(v)
    return torch.stack(out)


def decode_request(request) -> torch.Tensor | dict:
    """A self-contained request ``(paths, crop, resize, mode, views, train, seed, raw)`` (the
    files' paths as bytes): its images decoded as ``[views, B, 3, crop, crop]`` uint8, or with
    ``raw`` only read: their bytes, one uint8 buffer and the lengths (:func:`decode_batch`)."""
    paths, crop, resize, mode, views, train, seed, raw = request
    if raw:
        from torchvision.io import read_file

        data = [read_file(p.decode()) for p in paths]
        # one buffer and the lengths: a list of small tensors fails to cross to the main process
        # (one file descriptor each: "Bad file descriptor" under torch's file_descriptor sharing)
        return {"bytes": torch.cat(data), "lengths": torch.tensor([len(r) for r in data])}
    gen = torch.Generator().manual_seed(int(seed))
    return torch.stack([decode(p.decode(), crop, resize, mode, train, views, gen) for p in paths], 1)


class _Decode:
    """The requests ``(index array, views, train, seed)`` of a :class:`StreamImages` over ``files``
    as self-contained requests (:func:`decode_request`), and decoded in this process by ``[]``."""

    def __init__(self, files: ImagePaths, raw: bool = False):
        self.files, self.raw = files, raw

    def request(self, request) -> tuple:
        idx, views, train, seed = request
        f = self.files
        return f.paths[np.asarray(idx, dtype=np.int64)], f.crop, f.resize, f.mode, views, train, seed, self.raw

    def __getitem__(self, request):
        return decode_request(self.request(request))


class _Requests(torch.utils.data.Dataset):
    """The pool's DataLoader dataset: an item is a self-contained request, decoded by the worker."""

    def __getitem__(self, request):
        return decode_request(request)


class _Current:
    """The pool's DataLoader sampler: the requests of its current pass."""

    def __init__(self):
        self.requests: list = []

    def __iter__(self):
        return iter(self.requests)

    def __len__(self):
        return len(self.requests)


class DecodePool:
    """The DataLoader workers that decode for the :class:`StreamImages` of a run (its training
    set, the per-epoch draws of it, test and validation sets): started at the first request
    and kept until the pool is dropped (a DataLoader with persistent workers; each request
    carries its files' paths, so one pool serves every split). ``workers=0``: no workers,
    each request is decoded in this process when it is asked for.

    Why the workers start once: a DataLoader made for every plan forked new workers while
    the queue threads of the previous one were still exiting, and CPython 3.11 hangs a child
    forked while another thread is deleting its thread state (``PyOS_AfterFork_Child`` takes
    the runtime's thread-list lock before re-initialising it): one rank of the streamed
    torchrun check (tests/ddp_stream_check.py) hung so, its worker stuck in that lock, in
    2 of about 30 runs on a loaded 2-core machine (2026-12-07, docs/data.md)."""

    def __init__(self, workers: int = 4, prefetch: int = 2, pin_memory: bool = False):
        self.workers, self.prefetch, self.pin_memory = int(workers), int(prefetch), bool(pin_memory)
        self._current = _Current()
        self._loader = None
        self.generation = 0  # passes started: a pass a later one replaced decodes its rest here

    def serve(self, requests: list):
        """An iterator over the decoded self-contained ``requests``, in order. A later
        :meth:`serve` takes the workers over; what this pass has not handed out by then is
        decoded in this process (the same pixels)."""
        self.generation += 1
        requests, it = list(requests), None
        if self.workers and requests:
            if self._loader is None:
                self._loader = torch.utils.data.DataLoader(_Requests(), batch_size=None, sampler=self._current,
                                                           num_workers=self.workers, pin_memory=self.pin_memory,
                                                           prefetch_factor=self.prefetch, persistent_workers=True)
            self._current.requests = requests
            it = iter(self._loader)
        return _Pass(self, requests, it)


class _Pass:
    """One :meth:`DecodePool.serve`: the workers' results while it is the pool's current pass."""

    def __init__(self, pool: DecodePool, requests: list, it):
        self.pool, self.requests, self.it, self.generation, self.k = pool, requests, it, pool.generation, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.k >= len(self.requests):
            raise StopIteration
        req = self.requests[self.k]
        self.k += 1
        if self.it is not None and self.pool.generation == self.generation:
            return next(self.it)
        self.it = None
        return decode_request(req)


_MMAP_FIXED = False


def fix_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """glibc only: allocations of ``nbytes`` and more always mmap-ed, so freed batches go back
    to the system. Why: glibc raises its mmap threshold after every large free (up to 32 MB),
    after which each freed batch stays in the heap; measured on a tree of 4,000 images at
    96 px, one evaluation pass over it in batches of 64 grew the process by ~5 MB a batch
    (691 -> 1,082 MB over 60 batches; flat at 691 MB with the threshold fixed at 1 MiB).
    Called once, by the first :class:`StreamImages`; elsewhere (not glibc) a no-op."""
    global _MMAP_FIXED
    if _MMAP_FIXED:
        return
    _MMAP_FIXED = True
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, int(nbytes))  # M_MMAP_THRESHOLD (also stops its adjustment)
    except (OSError, AttributeError):
        pass


class StreamImages:
    """Images of an :class:`ImagePaths`, decoded per batch by ``workers`` DataLoader
    workers (0: in this process) and normalised on ``device`` (see the module docstring)."""

    streamed = True

    def __init__(self, files: ImagePaths, mean, std, device, channels_last: bool = False, workers: int = 4,
                 seed: int = 0, prefetch: int = 2, decoder: str = "workers", pool: DecodePool | None = None):
        fix_mmap_threshold()
        self.files, self.device = files, torch.device(device)
        self.decoder = jpeg_decoder(decoder, self.device)  # workers | device (the module docstring)
        c = 3
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1) * 255.0
        self.channels_last = channels_last
        # the workers: a pool of their own, or one shared with the run's other splits (and the draws of subset)
        self.pool = pool if pool is not None else DecodePool(workers, prefetch, self.device.type == "cuda")
        self.seeds = torch.Generator().manual_seed(int(seed))
        self._plan: list = []  # requests announced and not yet served, in order
        self._it = None  # the DataLoader iterator decoding them
        self._held: list = []  # views of the current request still to be handed out

    def __len__(self):
        return len(self.files)

    @property
    def workers(self) -> int:
        """The decoding workers of its pool (0: decoded in this process)."""
        return self.pool.workers

    @property
    def x(self):  # what the resident path's callers read for the shape
        return self.files

    def subset(self, idx, seed: int | None = None) -> "StreamImages":
        """The images at ``idx`` (a per-epoch draw), with this object's settings; their
        crops and flips seeded by ``seed`` (None: the next number of this object's seeds)."""
        if seed is None:
            seed = int(torch.randint(2 ** 62, (1,), generator=self.seeds))
        return StreamImages(self.files[idx], (self.mean.view(-1) / 255).tolist(), (self.std.view(-1) / 255).tolist(),
                            self.device, self.channels_last, seed=seed, decoder=self.decoder, pool=self.pool)

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        out = (xb.to(self.device, non_blocking=True).float() - self.mean) / self.std
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return out.contiguous(memory_format=fmt)

    # ---------------------------------------------------------------- decoding
    def _loader(self, requests: list):
        """The decoded ``requests`` (``(index array, views, train, seed)``), in order, from the pool."""
        import torchvision.io  # noqa: F401  imported here once, so forked workers do not each import it
        from torchvision.transforms.v2 import functional  # noqa: F401

        d = _Decode(self.files, self.decoder == "device")
        return self.pool.serve([d.request(r) for r in requests])

    def plan(self, batches, train: bool = True, views: int = 1) -> None:
        """Announce the next requests: ``batches`` (index tensors) in the order they will
        be asked for, each for ``views`` augmented views (``train``) or one plain view."""
        reqs = [(b.cpu().numpy(), views, train, int(torch.randint(2 ** 62, (1,), generator=self.seeds)))
                for b in batches]
        self.plan_requests(reqs)

    def plan_requests(self, reqs: list) -> None:
        self._plan, self._held = list(reqs), []
        self._it = self._loader(list(reqs)) if reqs else None  # a copy: _plan is consumed as served

    def _decoded(self, req, out):
        """A request's views ``[views, B, 3, crop, crop]``: ``out`` as the worker gave it, or
        its files' bytes decoded here on the device (``decoder="device"``)."""
        if self.decoder != "device":
            return out
        f = self.files
        return decode_batch(out, self.device, f.crop, f.resize, f.mode, req[2], req[1], req[3])

    def _get(self, idx: torch.Tensor, train: bool) -> torch.Tensor:
        """The next view of the images at ``idx`` (uint8 ``[B, 3, crop, crop]``, on the host or pinned)."""
        if self._held and self._held[0][0] is idx:
            _, views = self._held[0]
            v = views.pop(0)
            if not views:
                self._held.pop(0)
            return v
        ic = idx.cpu().numpy()
        if self._plan and self._plan[0][2] == train and np.array_equal(self._plan[0][0], ic):
            req = self._plan.pop(0)
            out = self._decoded(req, next(self._it))
        else:  # not announced: decode here, in the calling process
            req = (ic, 1, train, int(torch.randint(2 ** 62, (1,), generator=self.seeds)))
            out = self._decoded(req, _Decode(self.files, self.decoder == "device")[req])
        views = list(out.unbind(0))
        first = views.pop(0)
        if views:
            self._held = [(idx, views)]
        return first

    # ---------------------------------------------------------------- the DeviceImages interface
    def batch(self, idx: torch.Tensor, augment: bool = False, padding: int = 4, hflip: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
        xb = self._get(idx, augment).to(self.device, non_blocking=True)
        if augment and self.files.mode == "square":
            xb = augment_batch(xb, padding, hflip, generator)
        return self.normalize(xb)

    def augmented(self, idx: torch.Tensor, draws: tuple, padding: int = 4) -> torch.Tensor:
        xb = self._get(idx, True).to(self.device, non_blocking=True)
        if self.files.mode == "square":
            xb = augment_apply(xb, draws, padding)
        return self.normalize(xb)

    def iter_batches(self, batch_size: int):
        """Plain (evaluation-transform) batches in order, decoded ahead by the workers."""
        n = len(self)
        chunks = [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
        if not chunks:
            return
        # the loader iterated alone (zip(chunks, loader) made the process grow by ~5 MB a batch here)
        reqs = [(c, 1, False, 0) for c in chunks]
        for k, out in enumerate(self._loader(reqs)):
            yield torch.as_tensor(chunks[k], device=self.device), self.normalize(self._decoded(reqs[k], out)[0])


def balanced_draw(labels: np.ndarray, n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """DivideMix's per-epoch Clothing1M sample (dataloader_clothing1M.py, mode ``all``):
    the images shuffled, each kept while its (noisy) class has fewer than
    ``n / num_classes`` and fewer than ``n`` are kept; returned in a fresh random order.
    A class with fewer images than its quota gives all it has (the draw is then
    smaller than ``n``, as there)."""
    labels = np.asarray(labels)
    perm = rng.permutation(len(labels))
    lab = labels[perm]
    # rank of each shuffled image within its class: kept while rank < n / C
    order = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[order], np.arange(num_classes))
    rank = np.empty(len(lab), dtype=np.int64)
    rank[order] = np.arange(len(lab)) - starts[lab[order]]
    keep = np.flatnonzero(rank < n / num_classes)[:n]
    out = perm[keep]
    return out[rng.permutation(len(out))]


def device_images(x, mean, std, device, channels_last: bool, cfg, seed: int = 0, pool: DecodePool | None = None):
    """The images of a split on the run's ``device``: :class:`StreamImages` for an
    :class:`ImagePaths` (decoded by ``pool``, else by a pool of ``cfg.loader_workers`` of
    its own), else the resident :class:`~hallnll.data.gpu.DeviceImages`."""
    from .gpu import DeviceImages

    if isinstance(x, ImagePaths):
        return StreamImages(x, mean, std, device, channels_last, cfg.loader_workers, seed,
                            decoder=jpeg_decoder(cfg.jpeg_decode, device), pool=pool)
    return DeviceImages(x, mean, std, device, channels_last)


def sample_mean_std(files: ImagePaths, n: int = 1000) -> tuple:
    """Per-channel mean and std in [0, 1] of the first ``n`` images (evaluation transform):
    the normalisation of a streamed folder, whose images are never all decoded at once."""
    k = min(n, len(files))
    x = _Decode(files)[(np.arange(k), 1, False, 0)][0].float() / 255.0
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
