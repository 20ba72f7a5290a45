"""The suite and the quick start run on any x86 CPU (the any-CPU issue).

oneDNN's AVX2 convolution kernels (AMD EPYC and other CPUs without AVX-512;
``ONEDNN_MAX_CPU_ISA=AVX2`` gives an AVX-512 machine the same kernels) crashed
the process (heap corruption, a segmentation fault) in the backward pass of a
PreActResNet-18 of width 4 fed the augmented gather's channels-last-strided
NCHW view. Batches now reach the model in the format the run asks for.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hallnll.data import DeviceImages, augment_draws

REPO = Path(__file__).resolve().parents[1]

#: real images at the size the CIFAR tests use: digits, upsampled to 32x32, three channels
TRAIN = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import torch.nn.functional as F
from hallnll.data import DeviceImages, load_digits
from hallnll.engine import ce_epoch, make_optimizer
from hallnll.models import build_model
torch.set_num_threads(1)
d = load_digits()
x = F.interpolate(d.x_train[:256].float(), size=32, mode="nearest").to(torch.uint8).repeat(1, 3, 1, 1)
images = DeviceImages(x, (0.5,) * 3, (0.25,) * 3, "cpu")
for width, batch in ((4, 16), (8, 16), (4, 128)):
    torch.manual_seed(0)
    model = build_model("preact_resnet18", 10, 3, width=width)
    opt = make_optimizer(model.parameters(), 0.02, 0.9, 5e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        loss = ce_epoch(model, images, d.y_train[:256], opt, batch, gen, padding=4, hflip=True)
    assert torch.isfinite(loss), (width, batch)
print("trained", torch.backends.cpu.get_cpu_capability())
"""


@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_reach_the_model_in_the_format_the_run_asks_for(digits, channels_last):
    images = DeviceImages(digits.x_train, digits.mean, digits.std, "cpu", channels_last=channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    idx = torch.arange(16)
    gen = torch.Generator().manual_seed(0)
    for xb in (images.augmented(idx, augment_draws(16, 1, True, gen), 1), images.batch(idx, augment=True,
               padding=1, generator=gen), images.batch(idx), next(images.iter_batches(16))[1]):
        assert xb.is_contiguous(memory_format=fmt)


def test_narrow_models_train_on_augmented_batches_with_avx2_kernels():
    """Widths 4 and 8 (the tests' narrow models) on augmented batches, in a process whose
    oneDNN and ATen kernels are the AVX2 ones (it crashed there before the fix)."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    proc = subprocess.run([sys.executable, "-c", TRAIN, str(REPO)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "trained AVX2" in proc.stdout
