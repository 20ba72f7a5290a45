"""Clothing1M (Xiao et al. 2015) read as it is distributed, no conversion step.

``data_root`` is the folder holding::

    images/                    the JPEGs, under the keys' paths (images/0/00/xxx.jpg)
    category_names_eng.txt     the 14 class names, one a line (class i on line i + 1)
    noisy_label_kv.txt         "images/... LABEL" per line: the noisy labels
    clean_label_kv.txt         "images/... LABEL" per line: the clean labels
    noisy_train_key_list.txt   the training images (noisy labels), one key a line
    clean_val_key_list.txt     the 14k clean validation images
    clean_test_key_list.txt    the 10k clean test images

as DivideMix's dataloader_clothing1M.py reads it (keys start with ``images/``
and name a file under ``data_root``). Everything is checked before a run
starts: a missing file, a malformed line (with its number), a label outside
0..13, a listed key without a label or without its image each raise one
:class:`~hallnll.data.sources.DataError`. The images are not decoded here:
the splits are :class:`~hallnll.data.stream.ImagePaths`, streamed per batch.
Checking that each listed image exists is one ``stat`` per file (about 1.07M
for the full set: seconds on a local disk).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .sources import DataError, ImageData
from .stream import CLOTHING1M_MEAN, CLOTHING1M_STD, ImagePaths

FILES = ("category_names_eng.txt", "noisy_label_kv.txt", "clean_label_kv.txt", "noisy_train_key_list.txt",
         "clean_val_key_list.txt", "clean_test_key_list.txt")
NUM_CLASSES = 14
_HINT = ("data_root must be the Clothing1M folder as distributed (images/, category_names_eng.txt, "
         "noisy_label_kv.txt, clean_label_kv.txt, noisy_train_key_list.txt, clean_val_key_list.txt, "
         "clean_test_key_list.txt)")


def _lines(path: Path):
    """(1-based line number, stripped line) of the non-blank lines of ``path``."""
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            s = line.strip()
            if s:
                yield n, s


def _read_kv(path: Path) -> dict:
    out = {}
    for n, s in _lines(path):
        parts = s.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"clothing1m: {str(path)!r} line {n}: expected 'images/.../NAME.jpg LABEL', got {s!r}")
        label = int(parts[1])
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"clothing1m: {str(path)!r} line {n}: label {label} is outside 0..{NUM_CLASSES - 1} "
                            f"(Clothing1M has {NUM_CLASSES} classes)")
        out[parts[0]] = label
    return out


def _read_keys(path: Path, labels: dict, label_file: str, root: Path) -> list:
    keys = []
    for n, s in _lines(path):
        if len(s.split()) != 1:
            raise DataError(f"clothing1m: {str(path)!r} line {n}: expected one key 'images/.../NAME.jpg', got {s!r}")
        if s not in labels:
            raise DataError(f"clothing1m: {str(path)!r} line {n}: key {s!r} has no label in {label_file}")
        if not os.path.isfile(root / s):
            raise DataError(f"clothing1m: {str(path)!r} line {n}: key {s!r} has no image "
                            f"({str(root / s)!r} does not exist)")
        keys.append(s)
    if not keys:
        raise DataError(f"clothing1m: {str(path)!r} lists no images")
    return keys


def load_clothing1m(root, crop: int = 224, resize: int = 256) -> ImageData:
    """The training (noisy labels), validation and test splits (clean labels) of
    Clothing1M under ``root``; images streamed with DivideMix's transforms
    (resize ``resize``, crop ``crop``) and normalisation."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"clothing1m: data_root {str(root)!r} is not a folder; {_HINT}")
    for name in FILES:
        if not (root / name).is_file():
            raise DataError(f"clothing1m: {name} is missing under {str(root)!r}; {_HINT}")
    if not (root / "images").is_dir():
        raise DataError(f"clothing1m: images/ is missing under {str(root)!r}; {_HINT}")
    classes = [s for _, s in _lines(root / "category_names_eng.txt")]
    if len(classes) != NUM_CLASSES:
        raise DataError(f"clothing1m: {str(root / 'category_names_eng.txt')!r} has {len(classes)} class names; "
                        f"Clothing1M has {NUM_CLASSES}, one a line")
    noisy = _read_kv(root / "noisy_label_kv.txt")
    clean = _read_kv(root / "clean_label_kv.txt")
    splits = {}
    for split, name, labels, lname in (("train", "noisy_train_key_list.txt", noisy, "noisy_label_kv.txt"),
                                       ("val", "clean_val_key_list.txt", clean, "clean_label_kv.txt"),
                                       ("test", "clean_test_key_list.txt", clean, "clean_label_kv.txt")):
        keys = _read_keys(root / name, labels, lname, root)
        files = ImagePaths([str(root / k) for k in keys], crop, resize, "dividemix")
        splits[split] = (files, torch.tensor([labels[k] for k in keys], dtype=torch.int64), keys)
    (xtr, ytr, ktr), (xva, yva, _), (xte, yte, _) = splits["train"], splits["val"], splits["test"]
    return ImageData("clothing1m", xtr, ytr, xte, yte, classes=classes, mean=CLOTHING1M_MEAN, std=CLOTHING1M_STD,
                     train_labels_known=False, train_paths=ktr, x_val=xva, y_val=yva)


def write_synthetic_tree(root, n_train: int = 280, n_val: int = 70, n_test: int = 70, side: int = 40,
                         noise_rate: float = 0.3, seed: int = 0, distinct: int = 0, quality: int = 90) -> dict:
    """A Clothing1M-shaped folder under ``root`` (the official file names and line
    formats) for tests, benchmarks and the GPU timing: 14 classes, JPEGs of about
    ``side`` px (each side drawn in [side, 1.25 side], so sizes vary as in the real
    set) whose colour and stripes depend on the class, the training labels
    symmetrically flipped at ``noise_rate`` (the truth is in ``clean_label_kv.txt``
    for every key, as for the ~25% of Clothing1M's training images that have one).
    ``distinct`` > 0 writes only that many image files and hard-links the rest (a
    real-size tree for timing without writing 1M files). Returns the true and noisy
    training labels."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    true = rng.integers(0, NUM_CLASSES, n)
    keys = [f"images/{i % 10}/{i % 100:02d}/{i:07d}.jpg" for i in range(n)]
    made: list = []
    for i, k in enumerate(keys):
        p = root / k
        p.parent.mkdir(parents=True, exist_ok=True)
        if distinct and len(made) >= distinct:
            j = made[i % distinct]
            os.link(root / keys[j], p) if not p.exists() else None
            continue
        h, w = (int(side * (1 + 0.25 * rng.random())) for _ in range(2))
        c = true[i]
        base = np.array([(c * 37) % 256, (c * 91) % 256, (c * 173) % 256], dtype=np.float64)
        # smooth shading (noise at 1/8 resolution, upsampled) plus a little grain: JPEGs of about the
        # size and decoding cost of photos (pure per-pixel noise would be ~5x larger and slower)
        shade = Image.fromarray(rng.normal(128, 40, (max(1, h // 8), max(1, w // 8), 3)).clip(0, 255).astype(np.uint8))
        img = base + 0.5 * (np.asarray(shade.resize((w, h), Image.BILINEAR), dtype=np.float64) - 128)
        img += rng.normal(0, 4, (h, w, 3))
        img[:, :: 2 + c % 4] *= 0.6  # stripes whose period depends on the class
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(p, quality=quality)
        made.append(i)
    tr, va, te = slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)
    noisy = true.copy()
    flip = rng.random(n_train) < noise_rate
    noisy[:n_train][flip] = (true[:n_train][flip] + rng.integers(1, NUM_CLASSES, int(flip.sum()))) % NUM_CLASSES
    names = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker", "Jacket", "Downcoat",
             "Suit", "Shawl", "Dress", "Vest", "Underwear"]
    (root / "category_names_eng.txt").write_text("\n".join(names) + "\n")
    (root / "noisy_label_kv.txt").write_text("".join(f"{k} {noisy[i]}\n" for i, k in enumerate(keys[tr])))
    (root / "clean_label_kv.txt").write_text("".join(f"{k} {true[i]}\n" for i, k in enumerate(keys)))
    for name, sl in (("noisy_train_key_list.txt", tr), ("clean_val_key_list.txt", va), ("clean_test_key_list.txt", te)):
        (root / name).write_text("".join(k + "\n" for k in keys[sl]))
    return {"true": true[tr], "noisy": noisy[:n_train]}
