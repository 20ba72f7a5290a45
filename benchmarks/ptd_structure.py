"""The transition structure of PTD noise (Xia et al., NeurIPS 2020) on CIFAR-10,
hallnll's generator beside a line-by-line port of the original.

    python benchmarks/ptd_structure.py --data-root /tmp/c10 [--rate 0.4] [--seeds 1 2 3 4 5]

For each seed it prints, from :meth:`hallnll.noise.NoiseReport.structure`:
the largest off-diagonal transition entry, the effective number of classes
the flips of a clean class go to, and the number of noisy classes whose
samples are mostly wrong; then mean and standard deviation per generator.

Generators:

- ``hallnll``: :func:`hallnll.noise.ptd` (raw 0..255 pixels);
- ``xia``: ``get_instance_noisy_label`` of xiaoboxia/Part-dependent-label-noise
  (``tools.py``) as written there, on the CPU: numpy/scipy random draws
  (``stats.truncnorm`` flip rates, ``np.random.randn`` projections,
  ``np.random.choice`` labels), the images as ``torch.from_numpy(...).float()``
  of the flattened uint8 array, as their ``data.py`` passes them;
- ``xia-normalised``: the same port fed per-channel normalised pixels, the
  input hallnll used before (what the defect looked like).

The two generators draw different random numbers, so their labels differ
seed by seed; their statistics should agree in distribution.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hallnll import noise as N  # noqa: E402
from hallnll.data import load_cifar  # noqa: E402


def xia_get_instance_noisy_label(n, images, labels, num_classes, norm_std, seed):
    """Xia et al.'s ``get_instance_noisy_label`` on the CPU (their code runs the same on CUDA)."""
    from scipy import stats

    np.random.seed(int(seed))
    torch.manual_seed(int(seed))
    flip_distribution = stats.truncnorm((0 - n) / norm_std, (1 - n) / norm_std, loc=n, scale=norm_std)
    flip_rate = flip_distribution.rvs(labels.shape[0])
    feature_size = images[0].numel()
    W = torch.FloatTensor(np.random.randn(num_classes, feature_size, num_classes))
    P = []
    for i in range(len(labels)):  # their loop over zip(data, targets)
        x, y = images[i], int(labels[i])
        A = x.view(1, -1).mm(W[y]).squeeze(0)
        A[y] = -float("inf")
        A = flip_rate[i] * F.softmax(A, dim=0)
        A[y] += 1 - flip_rate[i]
        P.append(A)
    P = torch.stack(P, 0).cpu().numpy()
    choices = list(range(num_classes))
    return torch.as_tensor(np.array([np.random.choice(choices, p=P[i]) for i in range(len(labels))]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default=".data", help="folder holding cifar-10-batches-py/")
    ap.add_argument("--rate", type=float, default=0.4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--generators", nargs="+", default=["hallnll", "xia", "xia-normalised"],
                    choices=["hallnll", "xia", "xia-normalised"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_cifar("cifar10", args.data_root, download=False)
    y, c = data.y_train, data.num_classes
    raw = data.x_train.reshape(len(y), -1).float()  # their torch.from_numpy(train_images).float()
    mean = torch.tensor(data.mean).repeat_interleave(raw.shape[1] // len(data.mean))
    std = torch.tensor(data.std).repeat_interleave(raw.shape[1] // len(data.std))
    keys = ("largest_flip", "destinations", "majority_wrong")
    print(f"CIFAR-10 from {args.data_root}, PTD {args.rate:.0%}, seeds {args.seeds}")
    print(f"{'generator':<15} {'seed':>4} {'rate':>6} {'largest':>8} {'dest.':>6} {'maj.wrong':>9} {'s':>6}")
    for gen in args.generators:
        rows = []
        for s in args.seeds:
            t = time.perf_counter()
            if gen == "hallnll":
                z = N.ptd(data.x_train, y, c, args.rate, s)
            else:
                x = raw if gen == "xia" else (raw / 255.0 - mean) / std
                z = xia_get_instance_noisy_label(args.rate, x, y, c, 0.1, s)
            st = N.report(y, z, c, "ptd", args.rate, s).structure()
            rows.append(st)
            print(f"{gen:<15} {s:>4} {float((z != y).double().mean()):6.3f} {st['largest_flip']:8.3f} "
                  f"{st['destinations']:6.2f} {st['majority_wrong']:9d} {time.perf_counter() - t:6.1f}", flush=True)
        summary = []
        for k in keys:
            v = [float(r[k]) for r in rows]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            summary.append(f"{k} {statistics.mean(v):.3f} +- {sd:.3f}")
        print(f"{gen:<15} mean: " + ", ".join(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
