"""The development measurement behind the label-issue report's choices
(``suggest_confidence``, the rule), on data the benchmark does not use.

    python benchmarks/label_issues_dev.py --data-root /tmp/c10 \\
        --noise-csv ../shared/data/noisy-labels/cifar10-classification-idn/dependent0.3.csv --out dev.npz
    python benchmarks/label_issues_dev.py --analyze dev.npz

Setting: CIFAR-10 (JPEG q75 copy) training images 40000-43999 (the benchmark
uses 0-3999) with the published classification-based 30% labels of Chen et
al. (the benchmark uses CIFAR-10N human labels), the first 2000 test images,
the CPU profile's model and schedule (PreActResNet-18 width 16, 32 px, 30
epochs, bf16 on the CPU). Out-of-sample probabilities from
:func:`hallnll.label_issues.out_of_sample`: the method (``hallnll``) and
cross-entropy (``ce``), 2 folds each; saved to ``--out``. ``--analyze``
prints, for both, the precision and recall of the report's rule and of
"predicted class differs from the given one", agreement with cleanlab's
``find_label_issues``, and the accuracy of the suggested labels for several
``suggest_confidence`` bars.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hallnll import label_issues as LI  # noqa: E402
from hallnll import load_config  # noqa: E402
from hallnll.data import ImageData, load_cifar  # noqa: E402
from hallnll.noise import load_label_csv  # noqa: E402

SETTINGS = ["dataset=arrays", "noise=none", "arch=preact_resnet18", "width=16", "epochs=30", "warmup_epochs=10",
            "lr_decay_epoch=25", "batch_size=128", "p=0.6", "lambda_conf=0.8", "crop_padding=4", "hflip=true",
            "device=cpu", "bf16=true", "cpu_bf16=true", "eval_batch_size=500", "progress=false", "checkpoint_every=0"]


def measure(args) -> None:
    torch.set_num_threads(1)
    c = load_cifar("cifar10", args.data_root, download=False)
    idx = torch.arange(args.offset, args.offset + args.n_train)
    _, noisy = load_label_csv(args.noise_csv, 10, c.y_train)
    given = noisy[idx]
    data = ImageData("dev", c.x_train[idx], c.y_train[idx], c.x_test[:args.n_test], c.y_test[:args.n_test],
                     classes=c.classes)
    res = {"y": data.y_train.numpy(), "yn": given.numpy(), "yte": data.y_test.numpy()}
    print(f"noise {float((given != data.y_train).float().mean()):.4f}", flush=True)
    for variant in ("hallnll", "ce"):
        cfg = load_config(None, SETTINGS + [f"variant={variant}", "label_folds=2"])
        t = time.perf_counter()
        oos = LI.out_of_sample(cfg, data, given, None, progress=False)
        res[f"{variant}_oos"], res[f"{variant}_test"] = oos.probs, oos.test_probs
        print(f"{variant}: {time.perf_counter() - t:.0f} s, test acc {(oos.test_probs.argmax(1) == res['yte']).mean():.4f}, "
              f"out-of-sample acc on the training images {(oos.probs.argmax(1) == res['y']).mean():.4f}", flush=True)
        np.savez(args.out, **res)


def analyze(path) -> None:
    from cleanlab.filter import find_label_issues

    d = dict(np.load(path))
    y, yn = d["y"], d["yn"]
    wrong = yn != y
    print(f"{len(y)} images, noise {wrong.mean():.4f}, given labels {100 * (1 - wrong.mean()):.2f}% right")
    for key in ("hallnll", "ce"):
        if f"{key}_oos" not in d:
            continue
        p = d[f"{key}_oos"].astype(np.float64)
        pred = p.argmax(1)
        print(f"\n{key}: out-of-sample accuracy {100 * (pred == y).mean():.1f}%, test {100 * (d[f'{key}_test'].argmax(1) == d['yte']).mean():.1f}%")
        r = LI.prune_by_noise_rate(p, yn, 0.0)
        cl = find_label_issues(yn, p)
        for name, flag in (("report rule (prune by noise rate)", r["is_label_issue"]), ("predicted != given", pred != yn)):
            s = LI.issue_scores(flag, wrong, ~wrong, np.where(flag, pred, yn) == y)
            print(f"  {name:36s} flagged {s['n_flagged']:5d}  precision {100 * s['precision']:.1f}  "
                  f"recall {100 * s['recall']:.1f}")
        print(f"  cleanlab find_label_issues agrees on {100 * (cl == r['is_label_issue']).mean():.2f}% of the images")
        for bar in (0.0, 0.5, 0.7, 0.8, 0.9):
            sug = LI.prune_by_noise_rate(p, yn, bar)["suggested"]
            print(f"  suggest_confidence {bar}: {int((sug != yn).sum()):5d} labels changed, suggested labels "
                  f"{100 * (sug == y).mean():.2f}% right")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=".data", help="folder holding cifar-10-batches-py/")
    ap.add_argument("--noise-csv", help="label,label_noisy CSV of the 50,000 training images")
    ap.add_argument("--offset", type=int, default=40000)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--out", default="dev.npz")
    ap.add_argument("--analyze", metavar="NPZ", help="print the table of a saved measurement")
    args = ap.parse_args(argv)
    if args.analyze:
        analyze(args.analyze)
    else:
        measure(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
