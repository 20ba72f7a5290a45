"""Does DivideMix's warm-up entropy penalty make the easy selection cleaner?

    python benchmarks/warmup_penalty.py --data-root /tmp/c10 \
        --labels ../shared/data/noisy-labels/cifar10-classification-idn/dependent0.4.csv \
        --penalties 0 1 --seeds 0 1

On a real CIFAR-10 subset — the first 1,000 images of each of the five
training batches (indices b*10000 .. b*10000+999, 5,000 images) with their
rows of a ``label,label_noisy`` file (the published C-based 40% labels) and
the first 2,000 test images — a narrow PreActResNet-18 warms up for
``--epochs`` epochs (batch 128, lr 0.02, crop 4 + flip, one CPU thread) with
``warmup_entropy_penalty`` = each of ``--penalties``; then, as the first SSL
epoch of a run would, :meth:`hallnll.run.Run.easiness` gives omega and the
script prints the precision (share of selected samples whose given label is
right) of :meth:`Run.select_easy` at P (Eq. 1, class-balanced) and of the GMM
threshold (omega > 0.5), the test accuracy, the mean confidence on the
noisy and on the clean samples, and seconds.

With ``--params FILE`` (e.g. ``params/digits-quick.yaml``) the data, the
noisy labels, the model and the warm-up are that file's instead (its
``warmup_epochs``, ``batch_size``, ``lr``, ``arch``; P is ``--p`` or the file's)::

    python benchmarks/warmup_penalty.py --params params/digits-quick.yaml --penalties 0 1 --seeds 0 1 2

Every step is the Run's own (``Run.epoch``, ``Run.easiness``,
``Run.select_easy``); the one thing built here is the narrow model
(``--width``, the base width of the four stages, 64 in the full network),
until the project's models take a width.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hallnll import engine, load_config, selection  # noqa: E402
from hallnll.data import ImageData, load_cifar  # noqa: E402
from hallnll.models import CifarResNet, PreActBlock  # noqa: E402
from hallnll.noise import load_label_csv  # noqa: E402
from hallnll.run import Run  # noqa: E402
from hallnll.train import prepare  # noqa: E402


def narrow_preact_resnet18(num_classes: int, width: int) -> nn.Module:
    """hallnll's PreActResNet-18 with stage widths (w, 2w, 4w, 8w) instead of (64, 128, 256, 512)."""
    m = CifarResNet.__new__(CifarResNet)
    nn.Module.__init__(m)
    m.in_planes, m.preact = width, True
    m.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    m.bn1 = nn.Identity()
    stages = []
    for planes, stride in zip((width, 2 * width, 4 * width, 8 * width), (1, 2, 2, 2)):
        stages.append(nn.Sequential(PreActBlock(m.in_planes, planes, stride), PreActBlock(planes, planes, 1)))
        m.in_planes = planes
    m.layers = nn.Sequential(*stages)
    m.bn_final = nn.BatchNorm2d(8 * width)
    m.feature_dim = 8 * width
    m.classifier = nn.Linear(8 * width, num_classes)
    return m


def subset(data: ImageData, per_batch: int, n_test: int) -> tuple:
    idx = torch.cat([torch.arange(b * 10000, b * 10000 + per_batch) for b in range(5)])
    sub = ImageData("cifar10-subset", data.x_train[idx].contiguous(), data.y_train[idx].clone(),
                    data.x_test[:n_test].contiguous(), data.y_test[:n_test].clone(), list(data.classes))
    return sub, idx


def precision(mask: torch.Tensor, right: torch.Tensor) -> tuple:
    n = int(mask.sum())
    return n, (float(right[mask].float().mean()) if n else float("nan"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default=".data")
    ap.add_argument("--labels", help="label,label_noisy CSV of the 50,000 training images")
    ap.add_argument("--params", help="a params file whose data, labels, model and warm-up to use instead")
    ap.add_argument("--penalties", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=10, help="warm-up epochs")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--per-batch", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--p", type=float, default=None, help="P of Eq. 1 (default 0.4, or the params file's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    if args.params:
        base = load_config(args.params, ["progress=false", "device=cpu"])
        data, noisy, _ = prepare(base, progress=False)
        p = base.p if args.p is None else args.p
        common = ["variant=easy", "progress=false", "device=cpu", f"p={p}"]
        warm = base.warmup_epochs
        right = noisy == data.y_train
        print(f"{args.params}: {len(noisy)} training images ({1 - float(right.float().mean()):.1%} of their labels "
              f"wrong), {len(data.y_test)} test; {base.arch}, {warm} warm-up epochs, batch {base.batch_size}, "
              f"lr {base.lr}, P {p}, one thread", flush=True)
    else:
        if not args.labels:
            ap.error("give --labels (a CIFAR-10 label,label_noisy CSV) or --params")
        full = load_cifar("cifar10", args.data_root, download=False)
        _, noisy_all = load_label_csv(args.labels, 10, clean=full.y_train)
        data, idx = subset(full, args.per_batch, args.n_test)
        noisy = noisy_all[idx]
        right = noisy == data.y_train
        p = 0.4 if args.p is None else args.p
        warm = args.epochs
        common = ["dataset=cifar10", "noise=none", "variant=easy", "arch=preact_resnet18", "device=cpu",
                  "batch_size=128", "lr=0.02", "crop_padding=4", "hflip=true", f"p={p}", "progress=false"]
        print(f"CIFAR-10 subset: {len(idx)} training images ({1 - float(right.float().mean()):.1%} of their labels "
              f"wrong), {len(data.y_test)} test; narrow PreActResNet-18 width {args.width}, {warm} warm-up "
              f"epochs, batch 128, lr 0.02, P {p}, one thread", flush=True)
    print(f"{'penalty':>7} {'seed':>4} {'test acc':>8} {'easy n':>6} {'easy prec':>9} {'gmm n':>6} {'gmm prec':>8} "
          f"{'conf wrong':>10} {'conf right':>10} {'s':>6}", flush=True)
    for seed in args.seeds:
        for w in args.penalties:
            t = time.perf_counter()
            cfg = load_config(args.params, common + [f"warmup_epochs={warm}", f"seed={seed}",
                                                     f"warmup_entropy_penalty={w}"])
            run = Run(cfg, data, noisy)
            if not args.params:
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    run.model = run.train_model = narrow_preact_resnet18(10, args.width)
                run.opt = engine.make_optimizer(run.model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay)
            for _ in range(warm):
                row = run.epoch()
                assert row["phase"] == "warmup"
            ez = run.easiness()
            easy = run.select_easy(ez.omega).easy_mask
            gmm = selection.select_gmm(ez.omega, cfg.gmm_threshold)
            conf = torch.softmax(ez.logits, 1).gather(1, noisy[:, None]).squeeze(1)
            ne, pe = precision(easy, right)
            ng, pg = precision(gmm, right)
            print(f"{w:7.2f} {seed:>4} {row['test_acc']:8.4f} {ne:6d} {pe:9.4f} {ng:6d} {pg:8.4f} "
                  f"{float(conf[~right].mean()):10.4f} {float(conf[right].mean()):10.4f} "
                  f"{time.perf_counter() - t:6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
