"""Where images come from. Every source returns an :class:`ImageData`: uint8
tensors ``[N, C, H, W]`` and int64 labels, ready to move to the GPU in one
piece (no per-image Python on the training path).

- ``digits``: scikit-learn's 8x8 handwritten digits (ships with the
  dependency, so a fresh offline machine can run). Pixel values 0..16 are
  scaled to 0..255; images are ``[N, 1, 8, 8]``; a fixed stratified split
  gives 1,347 training and 450 test images.
- ``cifar10`` / ``cifar100``: read from an existing ``cifar-10-batches-py/``
  or ``cifar-100-python/`` folder under ``root`` without torchvision's md5
  check (so the offline JPEG copy works), or downloaded through torchvision
  when the folder is missing and ``download`` is true. Official order.
- ``folder``: the user's own data, a CSV with columns ``path,label``
  (paths relative to the CSV), resized to ``image_size``.
"""
from __future__ import annotations

import csv
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class DataError(ValueError):
    """Data missing or malformed; the message says how to fix it."""


@dataclass
class ImageData:
    """A labelled image set: the clean labels when known (``y_train``)."""

    name: str
    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor  # int64 [N], true labels
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list = field(default_factory=list)
    mean: tuple = ()  # per-channel, in [0, 1]
    std: tuple = ()
    train_labels_known: bool = True  # False for a user's folder: y_train is the given label

    def head(self, n_train: int = 0, n_test: int = 0) -> "ImageData":
        """The first ``n_train`` training and ``n_test`` test images (0: all), with
        this set's classes and normalisation."""
        tr = slice(None, n_train or None)
        te = slice(None, n_test or None)
        return ImageData(self.name, self.x_train[tr], self.y_train[tr], self.x_test[te], self.y_test[te],
                         classes=list(self.classes), mean=self.mean, std=self.std,
                         train_labels_known=self.train_labels_known)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    def __post_init__(self):
        if not self.mean:
            x = self.x_train.float() / 255.0
            self.mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
            self.std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


def load_digits() -> ImageData:
    from sklearn.datasets import load_digits as _ld
    from sklearn.model_selection import train_test_split

    d = _ld()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [N,1,8,8]
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=450, random_state=0, stratify=y)
    tr.sort(), te.sort()
    return ImageData("digits", torch.from_numpy(x[tr]), torch.from_numpy(y[tr]), torch.from_numpy(x[te]),
                     torch.from_numpy(y[te]), classes=[str(i) for i in range(10)])


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _missing(root: Path, folder: str, name: str) -> DataError:
    return DataError(
        f"{name}: no {folder}/ under {str(root)!r} and download is off or failed. Either set "
        f"data_root to the folder that contains {folder}/ (e.g. one written by "
        f"`python materialize_cifar10.py PACK_DIR ROOT`), or set download=true on a machine with network.")


def load_cifar(name: str = "cifar10", root=".data", download: bool = True) -> ImageData:
    """CIFAR-10/100 in the official order, from ``root/cifar-10-batches-py`` (no md5 check)."""
    root = Path(root).expanduser()
    if name == "cifar10":
        folder, train_files, test_files, key = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"
    elif name == "cifar100":
        folder, train_files, test_files, key = "cifar-100-python", ["train"], ["test"], "fine_labels"
    else:
        raise DataError(f"unknown CIFAR variant {name!r}; use cifar10 or cifar100")
    base = root / folder
    if not base.is_dir():
        if not download:
            raise _missing(root, folder, name)
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)
        except Exception as e:  # offline, DNS, ...
            raise _missing(root, folder, name) from e
    for f in train_files + test_files:
        if not (base / f).is_file():
            raise DataError(f"{name}: {str(base / f)!r} is missing; the folder looks incomplete, re-create it")

    def read(files):
        xs, ys = [], []
        for f in files:
            d = _unpickle(base / f)
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    xtr, ytr = read(train_files)
    xte, yte = read(test_files)
    if name == "cifar10":
        classes = CIFAR10_CLASSES
        meta = base / "batches.meta"
        if meta.is_file():
            classes = list(_unpickle(meta).get("label_names", classes))
    else:
        meta = base / "meta"
        classes = list(_unpickle(meta)["fine_label_names"]) if meta.is_file() else [str(i) for i in range(100)]
    return ImageData(name, xtr, ytr, xte, yte, classes=classes)


def _read_path_label_csv(csv_path: Path):
    if not csv_path.is_file():
        raise DataError(f"folder: labels CSV {str(csv_path)!r} not found; give a CSV with columns path,label")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DataError(f"folder: {str(csv_path)!r} needs a header with columns path,label")
    return [(csv_path.parent / r["path"], r["label"]) for r in rows]


def _load_images(items, size: int, src: Path) -> torch.Tensor:
    from PIL import Image

    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, (p, _) in enumerate(items):
        if not p.is_file():
            raise DataError(f"folder: image {str(p)!r} listed in {str(src)!r} does not exist")
        with Image.open(p) as im:
            out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_folder(train_csv, test_csv: str = "", image_size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """The user's own images: ``path,label`` CSV(s); labels are ints or class names.

    The given (possibly noisy) labels become ``y_train``; ``train_labels_known``
    is False because no clean label exists. The test set should be clean.
    """
    train_csv = Path(train_csv)
    tr = _read_path_label_csv(train_csv)
    te = _read_path_label_csv(Path(test_csv)) if test_csv else []
    names = sorted({lab for _, lab in tr + te}, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s))
    if all(n.lstrip("-").isdigit() for n in names):
        ints = sorted(int(n) for n in names)
        if ints[0] < 0:
            raise DataError(f"folder: label {ints[0]} in {str(train_csv)!r} is negative; labels must be 0..C-1 or class names")
        classes = [str(i) for i in range(ints[-1] + 1)]
    else:
        classes = names
    index = {c: i for i, c in enumerate(classes)}
    x = _load_images(tr, image_size, train_csv)
    y = torch.tensor([index[lab] for _, lab in tr], dtype=torch.int64)
    if te:
        xte = _load_images(te, image_size, Path(test_csv))
        yte = torch.tensor([index[lab] for _, lab in te], dtype=torch.int64)
    else:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(y), generator=g)
        n_te = max(1, int(round(test_fraction * len(y))))
        te_idx, tr_idx = perm[:n_te].sort().values, perm[n_te:].sort().values
        x, xte, y, yte = x[tr_idx], x[te_idx], y[tr_idx], y[te_idx]
    return ImageData(f"folder:{train_csv.name}", x, y, xte, yte, classes=classes, train_labels_known=False)


def load_dataset(cfg) -> ImageData:
    """The dataset named by ``cfg.dataset`` (see the module docstring)."""
    if cfg.dataset == "digits":
        return load_digits()
    if cfg.dataset in ("cifar10", "cifar100"):
        return load_cifar(cfg.dataset, cfg.data_root, cfg.download)
    if cfg.dataset == "folder":
        return load_folder(cfg.folder_train_csv, cfg.folder_test_csv, cfg.image_size, cfg.folder_test_fraction, cfg.seed)
    raise DataError(f"unknown dataset {cfg.dataset!r}; use digits, cifar10, cifar100 or folder")
