"""FLOP counts of the bench (``hallnll bench``): one batch through
:class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix
products, 2 FLOPs per multiply-add)."""
from __future__ import annotations

import torch

from ..data import DeviceImages


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` as counted by FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


@torch.no_grad()
def model_forward_flops(model, images: DeviceImages, batch: int) -> float:
    """Forward FLOPs per image of ``model`` (eval mode, one batch of real inputs)."""
    was = model.training
    model.eval()
    idx = torch.arange(min(batch, len(images)), device=images.device)
    x = images.batch(idx)
    try:
        flops = count_flops(lambda: model(x))
    finally:
        model.train(was)
    return flops / len(idx)


@torch.no_grad()
def hallucinator_forward_flops(hal, classifier, dim: int, dev) -> float:
    """Forward FLOPs per anchor: h_phi(s_u, s_v) and the frozen g_rho on it (Eq. 2)."""
    b = 64
    s = torch.randn(b, dim, device=dev)
    return count_flops(lambda: classifier(hal(s, s))) / b
