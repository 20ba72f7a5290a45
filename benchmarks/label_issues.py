"""Label issues on a real folder of CIFAR-10 photos with human label noise:
``hallnll fit-folder`` against cleanlab's ``find_label_issues``.

    python benchmarks/label_issues.py --jpeg-dir ../shared/data/cifar10-jpeg \\
        --cifar-n ../shared/data/noisy-labels/cifar-n/CIFAR-10_human.npz --labels worse_label \\
        --n-train 4000 --n-test 2000 --out runs/bench_label_issues

1. **The folder.** The first ``--n-train`` training photos of the CIFAR-10
   JPEG copy are written as ``.jpg`` files (their own JPEG bytes) with a
   ``labels.csv`` of class names from CIFAR-10N (``--labels``: real
   annotators' labels of those very images, instance-dependent noise the
   method was not tuned on), and the first ``--n-test`` test photos with
   their clean labels in ``test.csv``. The truth is kept aside
   (``truth.csv``) and read only to score.
2. **hallnll**: ``hallnll fit-folder labels.csv --test test.csv`` with the
   CPU profile (``params/folder-cpu.yaml``), one CPU thread; its
   ``label_issues.csv`` is scored. The same report from cross-entropy models
   (``--set variant=ce``) is scored beside it, which tells the rule apart from
   the models; ``--ablation`` adds the report of one in-sample run
   (``label_folds=0``).
3. **cleanlab**: out-of-sample probabilities of the same model (same
   architecture, image size, epochs, learning-rate schedule, batch size and
   augmentation), trained by cross-entropy on the given labels with
   cleanlab's own recipe, ``--cleanlab-folds``-fold cross-validation (5, the
   default of ``cleanlab.count.estimate_cv_predicted_probabilities``), then
   ``cleanlab.filter.find_label_issues(labels, pred_probs)`` with its
   defaults; its suggested label is the predicted class of the flagged
   images (the given label elsewhere).

Scores on the training images against the truth: precision and recall of
``is_label_issue``, the accuracy of the given and of the suggested labels;
and the test accuracy of each model (mean of the fold models' probabilities).
Results are labelled "CIFAR-10 (JPEG q75 copy)". Writes ``results.json`` and
``results.md`` in ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hallnll import label_issues as LI  # noqa: E402
from hallnll.tools.cli import folder_config  # noqa: E402
from hallnll.data import CIFAR10_CLASSES, load_dataset  # noqa: E402
from hallnll.train import cpu_threads, fit  # noqa: E402


def build_folder(jpeg_dir: Path, noisy_npz: Path, key: str, n_train: int, n_test: int, out: Path) -> dict:
    """Write the photos and the CSVs; return the truth (name -> class) of every path."""
    folder = out / "folder"
    labels = np.load(noisy_npz)
    noisy, clean_n = labels[key], labels["clean_label"]
    truth = {}
    for split, n, csv_name in (("train", n_train, "labels.csv"), ("test", n_test, "test.csv")):
        pack = np.load(jpeg_dir / f"{split}.npz")
        jpeg, offsets, clean = pack["jpeg"], pack["offsets"], pack["labels"]
        if split == "train" and not np.array_equal(clean[: len(clean_n)], clean_n):
            raise SystemExit(f"{noisy_npz} is not in the order of {jpeg_dir}/train.npz")
        (folder / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            rel = f"{split}/{i:05d}.jpg"
            p = folder / rel
            if not p.is_file():
                p.write_bytes(jpeg[offsets[i]:offsets[i + 1]].tobytes())
            given = noisy[i] if split == "train" else clean[i]
            rows.append((rel, CIFAR10_CLASSES[int(given)]))
            truth[(split, rel)] = CIFAR10_CLASSES[int(clean[i])]
        with open(folder / csv_name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(rows)
    with open(out / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "path", "true_label"])
        w.writerows((s, p, t) for (s, p), t in truth.items())
    return truth


def read_rows(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def score_report(rows: list, truth: dict) -> dict:
    tr = [r for r in rows if r["split"] == "train"]
    true = np.array([truth[("train", r["path"])] for r in tr], dtype=object)
    given = np.array([r["given_label"] for r in tr], dtype=object)
    sugg = np.array([r["suggested_label"] for r in tr], dtype=object)
    flag = np.array([r["is_label_issue"] == "True" for r in tr])
    return LI.issue_scores(flag, given != true, given == true, sugg == true)


def cleanlab_baseline(cfg, k: int, out: Path, truth: dict) -> dict:
    """Cross-entropy k-fold out-of-sample probabilities of the same model, then cleanlab."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    t0 = time.perf_counter()
    ce = cfg.replace(variant="ce", label_folds=k, name="cleanlab-ce")
    data = load_dataset(ce)
    given = data.y_train.clone()
    oos = LI.out_of_sample(ce, data, given, out, resume=True, progress=False)
    g = given.numpy()
    flag = find_label_issues(labels=g, pred_probs=oos.probs)
    quality = get_label_quality_scores(g, oos.probs)
    sugg = np.where(flag, oos.probs.argmax(1), g)
    names = np.asarray(data.classes, dtype=object)
    true = np.array([truth[("train", p)] for p in data.train_paths], dtype=object)
    s = LI.issue_scores(flag, names[g] != true, names[g] == true, names[sugg] == true)
    s["test_acc"] = float((oos.test_probs.argmax(1) == data.y_test.numpy()).mean())
    s["seconds"] = time.perf_counter() - t0
    s["label_quality_mean"] = float(quality.mean())
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jpeg-dir", required=True, type=Path, help="the CIFAR-10 JPEG copy (train.npz, test.npz)")
    ap.add_argument("--cifar-n", required=True, type=Path, help="CIFAR-10_human.npz")
    ap.add_argument("--labels", default="worse_label", help="worse_label | random_label1 | aggre_label ...")
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--cleanlab-folds", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="settings for both methods")
    ap.add_argument("--ablation", action="store_true", help="also hallnll with label_folds=0 (one in-sample run)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_label_issues"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    truth = build_folder(args.jpeg_dir, args.cifar_n, args.labels, args.n_train, args.n_test, args.out)
    folder = args.out / "folder"
    sets = ["threads=1", "progress=false"] + args.set
    cfg = folder_config(folder / "labels.csv", folder / "test.csv", "folder-cpu", sets)
    results = {"setting": {"data": "CIFAR-10 (JPEG q75 copy)", "labels": f"CIFAR-10N {args.labels}",
                           "n_train": args.n_train, "n_test": args.n_test, "config": cfg.to_dict(),
                           "torch_threads": 1, "command": " ".join(sys.argv)}}
    rows = []

    def ours(tag, name, c):
        t0, c0 = time.perf_counter(), time.process_time()
        _, summary = LI.report(c, args.out / tag, progress=False)
        s = score_report(read_rows(args.out / tag / "label_issues.csv"), truth)
        s.update(test_acc=summary["test_acc"], seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
        results[tag] = s
        rows.append((name, s))
        print(f"{tag}: {json.dumps(s)}", flush=True)

    with cpu_threads(1):
        ours("hallnll", f"hallnll fit-folder ({cfg.label_folds}-fold)", cfg)
        c0 = time.process_time()
        s = cleanlab_baseline(cfg, args.cleanlab_folds, args.out / "cleanlab", truth)
        s["cpu_seconds"] = time.process_time() - c0
        results["cleanlab"] = s
        rows.append((f"cleanlab find_label_issues ({args.cleanlab_folds}-fold CE)", s))
        print(f"cleanlab: {json.dumps(s)}", flush=True)
        # the same report from cross-entropy models: separates the rule from the models
        ours("report-ce", f"fit-folder --set variant=ce ({cfg.label_folds}-fold)", cfg.replace(variant="ce"))
        if args.ablation:
            ours("hallnll-in-sample", "fit-folder --set label_folds=0 (one run, in-sample)", cfg.replace(label_folds=0))
    noise = rows[0][1]["noise_rate"]
    lines = [f"CIFAR-10 (JPEG q75 copy), {args.n_train} training photos with CIFAR-10N `{args.labels}` "
             f"(actual noise {100 * noise:.1f}%), {args.n_test} clean test photos; {cfg.arch} at {cfg.image_size} px, "
             f"{cfg.epochs} epochs, one CPU thread.", "",
             "| method | flagged | precision % | recall % | given acc % | suggested acc % | test acc % | CPU s | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in rows:
        lines.append(f"| {name} | {s['n_flagged']} | {100 * s['precision']:.1f} | {100 * s['recall']:.1f} | "
                     f"{100 * s['given_acc']:.1f} | {100 * s['suggested_acc']:.1f} | {100 * s['test_acc']:.1f} | "
                     f"{s['cpu_seconds']:.0f} | {s['seconds']:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
