"""One run over several processes: torch.distributed data parallelism (DDP), launched by torchrun.

    torchrun --standalone --nproc_per_node G -m hallnll train PARAMS --out DIR

``fit`` calls :func:`setup`: under torchrun (``WORLD_SIZE`` > 1) it joins the
process group (nccl on CUDA, each rank on ``cuda:LOCAL_RANK``; gloo on the
CPU). With one process every function here is the identity, so a plain run is
unchanged. What each step of Alg. 1 does under DDP, and why:

- **Training steps** (warm-up, MixMatch): every rank holds the whole training
  set on its device and the same random generators (seeded from ``cfg.seed``),
  so every rank draws the same *global* batch of ``batch_size`` indices and its
  augmentation numbers; each rank trains on its contiguous part of that batch
  (:func:`batch_part`) and DDP averages the gradients. So ``batch_size`` stays
  the global batch (split over ranks), the learning rate is unchanged, and every
  rank runs the same number of steps per epoch (no ``DistributedSampler``: it
  pads with duplicated samples). MixMatch mixes within a rank's part (its mixup
  partners are a uniform random permutation of that part, drawn from the
  global permutation so the generators stay in step).
- **Global steps** (Alg. 1 lines 5-19: per-sample losses and features, the
  GMM, Eq. 1, S_hal, the nearest-anchor search and the K-vote): each rank
  scores its contiguous shard of the N training images, no padding and no
  duplicates (:func:`predict_all`), and the shards are gathered in order, so
  every rank holds the same ``[N, C]`` logits and ``[N, d]`` features; the
  steps after it run on every rank on the same inputs with the same generator,
  so every rank ends with the same selection and the same S_hal (h_phi, small,
  is trained alike on every rank rather than data-parallel).
- **BatchNorm**: the running statistics of rank 0 are broadcast after each
  epoch's re-estimation (:func:`sync_buffers`), so every rank evaluates and
  saves the same buffers. SyncBatchNorm (CUDA only) is not used: the training
  batch statistics are per rank, those of its part of the batch.
- **Outputs**: rank 0 alone writes the run folder; every rank reads the
  checkpoint to resume.
- **Streamed images** (Clothing1M, a large folder: :mod:`hallnll.data.stream`):
  every rank holds the paths only; a training step announces *its part* of
  each global batch, which that rank's DataLoader workers decode (the crop and
  flip seeds are drawn alike on every rank, one per global batch), and each
  rank's shard of a global step is decoded by its own workers. The per-epoch
  class-balanced draw is made alike on every rank.
"""
from __future__ import annotations

import copy
import os

import torch
import torch.distributed as dist


def setup() -> None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), once; else nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes the outputs (rank 0, or the only process)."""
    return rank() == 0


def shard(n: int, r: int | None = None, w: int | None = None) -> slice:
    """Rank ``r``'s contiguous part of ``n`` items: sizes differ by at most one, no padding."""
    w = world() if w is None else w
    r = rank() if r is None else r
    base, extra = divmod(n, w)
    lo = r * base + min(r, extra)
    return slice(lo, lo + base + (1 if r < extra else 0))


def batch_part():
    """``part(n) -> slice``: this rank's share of a global batch of ``n`` (None with one process)."""
    return shard if world() > 1 else None


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """The ranks' ``t`` (different numbers of rows) concatenated in rank order, on every rank.

    The communication pads each part to the longest (gloo and nccl gather equal
    shapes); the padding is cut off again, so every row is one rank's own."""
    w = world()
    if w == 1:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(w)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad = torch.zeros((max(sizes) - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
    parts = [torch.empty((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device) for _ in range(w)]
    dist.all_gather(parts, torch.cat([t, pad]).contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def predict_all(model, images, batch_size: int, bf16: bool = False, features: bool = True):
    """:func:`hallnll.engine.predict` on all N images: each rank scores its shard, then
    the shards are gathered (every image scored exactly once, in order)."""
    from .engine import predict

    if world() == 1:
        return predict(model, images, batch_size, bf16, features)
    sl = shard(len(images))
    if getattr(images, "streamed", False):  # decoded by this rank's workers (the evaluation transform: no draws)
        part = images.subset(sl, seed=0)
    else:
        part = copy.copy(images)
        part.x = images.x[sl]
    logits, feats = predict(model, part, batch_size, bf16, features)
    return gather_rows(logits), (gather_rows(feats) if features else None)


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model the training steps call: DDP over the process group (the model itself with one process)."""
    if world() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                                   broadcast_buffers=False)


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank."""
    if world() == 1:
        return
    for b in model.buffers():
        dist.broadcast(b, 0)


def barrier() -> None:
    if world() > 1:
        dist.barrier()
