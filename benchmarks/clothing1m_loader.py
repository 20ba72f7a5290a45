"""The streamed image path of Clothing1M (hallnll.data.stream) measured on this machine.

    python benchmarks/clothing1m_loader.py throughput [--side 400] [--images 192] [--workers 1]
        [--device cpu|cuda] [--decoder workers|device]
    python benchmarks/clothing1m_loader.py memory [--n 400] [--side 96] [--crop 96]

``throughput``: images/s of the DataLoader workers decoding synthetic JPEGs of
about ``side`` px (sides drawn in [side, 1.25 side], quality 90) with DivideMix's
transforms: the training request of an SSL step (one decode, two random
224 crops + flips: ``train x2``), of a warm-up step (one view: ``train x1``)
and the evaluation transform (centre crop: ``eval``), per worker (the figure
to multiply by the workers a GPU machine runs). ``--decoder device`` times
the other decoder of ``Config.jpeg_decode``: the workers read the bytes and
``torchvision.io.decode_jpeg`` decodes each batch on ``--device`` (nvJPEG on
CUDA), the transforms done there; its figure is the whole process's images/s.

``memory``: the peak resident memory (the training process and its workers,
``ru_maxrss``) of a short Clothing1M run (``epoch_batches`` fixed, so the work
per epoch is fixed) on a tree of ``n`` training images and on one ten times
larger, each in a fresh process; and, as the contrast that shows the
measurement can see growth, the same images read as a resident folder
(``stream_above_gb`` high), whose peak grows by N x 3 x crop^2 bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def throughput(args) -> None:
    import numpy as np
    import torch

    from hallnll.data.clothing1m import load_clothing1m, write_synthetic_tree
    from hallnll.data.stream import StreamImages

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        write_synthetic_tree(d, n_train=args.images, n_val=14, n_test=14, side=args.side, seed=0)
        data = load_clothing1m(d)
        dev = torch.device(args.device)
        s = StreamImages(data.x_train, data.mean, data.std, dev, workers=args.workers, seed=0, decoder=args.decoder)

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        rows = []
        for name, train, views in (("train x2", True, 2), ("train x1", True, 1), ("eval", False, 1)):
            reqs = [(np.arange(i, i + args.batch), views, train, i) for i in range(0, args.images, args.batch)]
            it = s._loader(reqs)
            s._decoded(reqs[0], next(it))  # the workers started and the first batch done: not timed
            sync()
            t = time.perf_counter()
            n = sum(len(r[0]) for r in reqs[1:])
            for r in reqs[1:]:
                s._decoded(r, next(it))
            sync()
            sec = time.perf_counter() - t
            rows.append({"request": name, "images": n, "seconds": round(sec, 3), "images_per_s": round(n / sec, 1),
                         "images_per_s_per_worker": round(n / sec / max(args.workers, 1), 1)})
        print(json.dumps({"side": args.side, "workers": args.workers, "batch": args.batch, "device": str(dev),
                          "decoder": s.decoder, "rows": rows}, indent=1))


def _one(args) -> None:
    """In a fresh process: one short run, then the peak memory of this process and its children."""
    from hallnll import fit, load_config

    if args.layout == "clothing1m":
        sets = [f"data_root={args.root}"]
        params = "clothing1m"
    else:
        sets = ["dataset=folder", f"folder_train_csv={args.root}/train.csv", "noise=none", "stream_above_gb=1000",
                "easy_selection=gmm", "warmup_epochs=1"]
        params = "clothing1m"
    cfg = load_config(params, overrides=sets + [
        f"image_size={args.crop}", f"resize_size={args.crop + args.crop // 8}", "arch=small_cnn", "width=8",
        "pretrained=", "batch_size=16", "epoch_batches=4", "epochs=2", "lr_decay_epoch=0", "loader_workers=2",
        "bn_recal_images=32", "diagnostics=false", "progress=false", "eval_batch_size=64", "checkpoint_every=0",
        "threads=1"])
    t = time.perf_counter()
    fit(cfg, out_dir=None)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": round(own, 1), "peak_worker_rss_mib": round(kids, 1),
                      "seconds": round(time.perf_counter() - t, 1)}))


def memory(args) -> None:
    from hallnll.data.clothing1m import write_synthetic_tree

    out = []
    with tempfile.TemporaryDirectory() as d:
        for n in (args.n, 10 * args.n):
            root = Path(d) / f"n{n}"
            write_synthetic_tree(root, n_train=n, n_val=70, n_test=70, side=args.side, seed=0)
            keys = (root / "noisy_train_key_list.txt").read_text().split()
            lab = dict(line.split() for line in (root / "noisy_label_kv.txt").read_text().splitlines())
            (root / "train.csv").write_text("path,label\n" + "".join(f"{k},{lab[k]}\n" for k in keys))
            for layout in ("clothing1m", "resident-folder"):
                cmd = [sys.executable, __file__, "_one", "--root", str(root), "--layout", layout, "--crop",
                       str(args.crop)]
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
                if res.returncode:
                    sys.exit(res.stderr)
                row = {"n_train": n, "layout": layout, **json.loads(res.stdout.strip().splitlines()[-1])}
                out.append(row)
                print(json.dumps(row), flush=True)
    print(f"resident uint8 images of the larger tree: {10 * args.n * 3 * args.crop ** 2 / 2 ** 20:.1f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--side", type=int, default=400)
    t.add_argument("--images", type=int, default=192)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--device", default="cpu")
    t.add_argument("--decoder", choices=["workers", "device"], default="workers")
    m = sub.add_parser("memory")
    m.add_argument("--n", type=int, default=400)
    m.add_argument("--side", type=int, default=100)
    m.add_argument("--crop", type=int, default=96)
    o = sub.add_parser("_one")
    o.add_argument("--root")
    o.add_argument("--layout")
    o.add_argument("--crop", type=int)
    args = p.parse_args()
    {"throughput": throughput, "memory": memory, "_one": _one}[args.cmd](args)


if __name__ == "__main__":
    main()
