"""Seconds per training step with 1, 2, ... torch CPU threads: the measurement
behind the default of ``threads`` (docs/choices.md#threads).

    python benchmarks/threads.py [--threads 1 2] [--steps 30] [--rounds 3]

For each model the projects runs on a CPU -- the digits default (small CNN on
8x8 images, batch 32) and the CPU profile of one's own folder
(``params/folder-cpu.yaml``: PreActResNet-18 of width 16 at 32x32, batch
128, bf16 autocast where the CPU has AMX units) -- it times ``--steps``
cross-entropy steps (``engine.ce_epoch`` on random images: the same kernels as
training), alternating the thread counts for ``--rounds`` rounds so that a
change of load on a shared machine hits every count alike, and prints the
median seconds per step and the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hallnll import engine  # noqa: E402
from hallnll.tools.cli import cpu_has_amx  # noqa: E402
from hallnll.data import DeviceImages  # noqa: E402
from hallnll.models import build_model  # noqa: E402

SETTINGS = {  # name: (arch, width, channels, side, batch, bf16)
    "digits small_cnn 8 px, batch 32": ("small_cnn", 0, 1, 8, 32, False),
    "folder-cpu preact_resnet18 w16 32 px, batch 128": ("preact_resnet18", 16, 3, 32, 128, None),
}


def seconds_per_step(arch, width, channels, side, batch, bf16, steps) -> float:
    g = torch.Generator().manual_seed(0)
    n = batch * steps
    x = torch.randint(0, 256, (n, channels, side, side), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    torch.manual_seed(0)
    model = build_model(arch, 10, channels, width=width)
    images = DeviceImages(x, (0.5,) * channels, (0.25,) * channels, "cpu", channels_last=bf16)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    opt = engine.make_optimizer(model.parameters(), 0.02, 0.9, 5e-4)
    engine.ce_epoch(model, images, y, opt, batch, g, max(1, side // 8), True, bf16)  # warm-up of the kernels
    t = time.perf_counter()
    engine.ce_epoch(model, images, y, opt, batch, g, max(1, side // 8), True, bf16)
    return (time.perf_counter() - t) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    amx = cpu_has_amx()
    print(f"{os.cpu_count()} CPUs, AMX bf16: {amx}, load average before: {os.getloadavg()[0]:.1f}")
    for name, (arch, width, channels, side, batch, bf16) in SETTINGS.items():
        bf16 = amx if bf16 is None else bf16
        times = {t: [] for t in args.threads}
        for _ in range(args.rounds):
            for t in args.threads:
                torch.set_num_threads(t)
                times[t].append(seconds_per_step(arch, width, channels, side, batch, bf16, args.steps))
        cells = ", ".join(f"{t} thread(s) {1000 * statistics.median(v):.1f} ms" for t, v in times.items())
        print(f"{name}{' (bf16)' if bf16 else ''}: {cells} per step")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
