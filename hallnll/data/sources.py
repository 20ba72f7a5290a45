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
  (paths relative to the CSV; labels integers 0..C-1 or class names,
  checked by :func:`folder_classes`) and an optional clean test CSV,
  resized to ``image_size``.
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
    train_paths: list = field(default_factory=list)  # a folder's images as written in its CSV (else empty)
    test_paths: list = field(default_factory=list)
    # an optional validation split (Clothing1M's 14k clean images): the run reports its
    # accuracy per epoch and summary.json the test accuracy at the best-validation epoch
    x_val: object = None
    y_val: object = None

    def head(self, n_train: int = 0, n_test: int = 0) -> "ImageData":
        """The first ``n_train`` training and ``n_test`` test images (0: all), with
        this set's classes and normalisation."""
        tr = slice(None, n_train or None)
        te = slice(None, n_test or None)
        return ImageData(self.name, self.x_train[tr], self.y_train[tr], self.x_test[te], self.y_test[te],
                         classes=list(self.classes), mean=self.mean, std=self.std,
                         train_labels_known=self.train_labels_known, train_paths=self.train_paths[tr],
                         test_paths=self.test_paths[te], x_val=self.x_val, y_val=self.y_val)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def streamed(self) -> bool:
        """Whether the images are files streamed per batch (:mod:`hallnll.data.stream`)."""
        from .stream import ImagePaths

        return isinstance(self.x_train, ImagePaths)

    def __post_init__(self):
        if not self.mean:
            x = self.x_train.float() / 255.0
            self.mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
            self.std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


#: the 450 test rows of digits' fixed split (the other 1,347 train), shipped beside this module
DIGITS_TEST_ROWS = Path(__file__).with_name("digits_test_rows.txt")


def _digits_arrays() -> tuple:
    """scikit-learn's digits as ``(images [1797, 8, 8] in 0..16, targets)``: its bundled CSV read as
    ``sklearn.datasets.load_digits`` reads it, without importing scikit-learn (about 1 s of every
    process that trains on digits: a CLI run, a SLURM job, a notebook's kernel); through
    ``load_digits`` where the file is not where scikit-learn keeps it."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    where = spec.submodule_search_locations if spec is not None else None
    path = Path(list(where)[0]) / "datasets" / "data" / "digits.csv.gz" if where else None
    if path is not None and path.is_file():
        with gzip.open(path, "rt") as f:
            data = np.loadtxt(f, delimiter=",")
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    return d.images, d.target


def load_digits() -> ImageData:
    images, target = _digits_arrays()
    x = np.round(images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [N,1,8,8]
    y = target.astype(np.int64)
    # the split: scikit-learn's train_test_split(test_size=450, random_state=0, stratify=y), made once and
    # shipped (DIGITS_TEST_ROWS), so that it does not change with scikit-learn's splitter (tests/test_data.py)
    te = np.array(" ".join(ln for ln in DIGITS_TEST_ROWS.read_text().splitlines() if not ln.startswith("#")).split(),
                  dtype=np.int64)
    tr = np.setdiff1d(np.arange(len(y)), te)
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


def _read_path_label_csv(csv_path: Path) -> list:
    """Rows ``(path as written, label trimmed, 1-based line number)`` of a ``path,label`` CSV."""
    if csv_path.is_dir():
        raise DataError(f"folder: labels CSV {str(csv_path)!r} is a folder; give the CSV file (columns path,label)")
    if not csv_path.is_file():
        raise DataError(f"folder: labels CSV {str(csv_path)!r} not found; give a CSV with columns path,label")
    try:
        return _read_rows(csv_path)
    except UnicodeDecodeError as e:
        raise DataError(f"folder: {str(csv_path)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def _read_rows(csv_path: Path) -> list:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not {"path", "label"} <= set(header):
            raise DataError(f"folder: {str(csv_path)!r} needs a header line with columns path,label "
                            f"(found {', '.join(map(repr, header)) or 'an empty file'})")
        reader.fieldnames = header
        rows = []
        for r in reader:
            path, label = (r.get("path") or "").strip(), (r.get("label") or "").strip()
            if not path and not label:
                continue  # a blank line
            if not path or not label:
                raise DataError(f"folder: {str(csv_path)!r} line {reader.line_num}: empty "
                                f"{'path' if not path else 'label'}; every row needs a path and a label")
            rows.append((path, label, reader.line_num))
    if not rows:
        raise DataError(f"folder: {str(csv_path)!r} has a header but no rows; list one image per line as path,label")
    return rows


def _is_int(s: str) -> bool:
    return s.lstrip("+-").isdigit()


def _listing(counts: dict, limit: int = 30) -> str:
    items = [f"{name!r} ({n})" for name, n in counts.items()]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def folder_classes(labels, source: str) -> list:
    """The class names of a folder's training labels (already trimmed), or one
    :class:`DataError` that lists the classes found.

    - every label an integer: they must be exactly 0..C-1 (no gaps, no
      negatives, one spelling each: ``1`` and ``01`` are refused), class i is ``str(i)``;
    - otherwise the labels are class names, sorted; two names that differ only
      in case or inner whitespace (``cat``, ``Cat``, ``big  cat``) are refused,
      as they are almost always one class written two ways.
    """
    counts: dict = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    found = f"classes found in {source} (rows): {_listing(dict(sorted(counts.items())))}"
    if all(_is_int(c) for c in counts):
        by_value: dict = {}
        for c in counts:
            by_value.setdefault(int(c), []).append(c)
        spellings = [v for v in by_value.values() if len(v) > 1]
        if spellings:
            raise DataError(f"folder: labels {' and '.join(map(repr, sorted(spellings[0])))} are one integer written "
                            f"two ways; write each class one way. {found}")
        values = sorted(by_value)
        missing = sorted(set(range(values[-1] + 1)) - set(values))
        if values[0] < 0 or missing:
            what = (f"label {values[0]} is negative" if values[0] < 0 else
                    f"integer labels must be 0..C-1 without gaps, but {_listing({m: 0 for m in missing[:10]}).replace(' (0)', '')}"
                    f"{' ...' if len(missing) > 10 else ''} never occur(s)")
            raise DataError(f"folder: {what}; renumber the classes 0..{len(values) - 1} or use class names. {found}")
        return [str(v) for v in values]
    variants: dict = {}
    for c in counts:
        variants.setdefault(" ".join(c.split()).casefold(), []).append(c)
    clash = [v for v in variants.values() if len(v) > 1]
    if clash:
        names = " and ".join(repr(v) for v in sorted(clash[0]))
        raise DataError(f"folder: labels {names} differ only in case or spacing; write each class one way "
                        f"(the CSV is taken as written, so they would become {len(clash[0])} classes). {found}")
    return sorted(counts)


#: the background an image's transparent pixels are composited on (their colour values are arbitrary)
ALPHA_BACKGROUND = (255, 255, 255)


def to_rgb8(im):
    """``im`` (any mode PIL opens) as an 8-bit RGB image, read as a viewer shows it.

    - EXIF orientation applied (photos stored sideways).
    - 16- and 32-bit integer grey (``I;16*``, ``I``): 0..65535 scaled to 0..255
      (``convert("RGB")`` clips them, a 16-bit PNG comes out almost white); a
      32-bit ``I`` image is read as 16-bit data, which is what PNG and TIFF
      hold in it.
    - float grey (``F``): values in [0, 1] scaled by 255, values in [0, 255]
      taken as they are; others are refused (no range to read them in).
    - transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, a palette
      with a transparent colour): composited on :data:`ALPHA_BACKGROUND`.
    - palette, 1-bit, CMYK, YCbCr, grey: PIL's conversion to RGB.
    Any other mode raises ``ValueError`` naming it.
    """
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo >= 0 and hi <= 1:
            a = a * 255.0
        elif not (lo >= 0 and hi <= 255):
            raise ValueError(f"a float image with values {lo:g}..{hi:g}, neither in [0, 1] nor in [0, 255]")
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in im.info or mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "RGBa", "RGBA"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode in ("RGB", "L", "1", "P", "CMYK", "YCbCr"):
        return im.convert("RGB")
    raise ValueError(f"image mode {mode!r} is not one hallnll reads; save it as 8-bit RGB or greyscale")


def _load_images(items, size: int, src: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(items):
        if not p.is_file():
            raise DataError(f"folder: image {str(p)!r} listed in {str(src)!r} does not exist")
        try:
            with Image.open(p) as im:
                out[i] = np.asarray(to_rgb8(im).resize((size, size), Image.BILINEAR))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"folder: {str(p)!r} listed in {str(src)!r} is not a readable image ({e}); "
                            f"remove it from the CSV or replace the file") from None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_folder(train_csv, test_csv: str = "", image_size: int = 32, labels_are_truth: bool = False,
                stream_above_gb: float | None = None) -> ImageData:
    """The user's own images: ``path,label`` CSV(s); labels are ints 0..C-1 or class names.

    Labels are trimmed and checked (:func:`folder_classes`); the test CSV may
    only use classes of the training CSV. Without a test CSV there is no test
    set: every image is trained on and reported (a held-out split of noisy
    labels would measure nothing). ``train_paths`` / ``test_paths`` keep each
    image's path as written in its CSV (the label-issue report's key).

    When the decoded uint8 training set (N x 3 x image_size^2 bytes) would exceed
    ``stream_above_gb`` GiB (``Config.stream_above_gb``; None: never), the images
    are not decoded here but streamed per batch (:mod:`hallnll.data.stream`,
    ``square`` mode: the same resize and device-side crop/flip), their mean/std
    taken from the first 1,000 training images; every listed file must exist.

    The given (possibly noisy) labels become ``y_train`` with
    ``train_labels_known`` False, unless ``labels_are_truth`` (noise is then
    added to them by ``cfg.noise``). The test set should be clean.
    """
    train_csv = Path(train_csv)
    tr = _read_path_label_csv(train_csv)
    te = _read_path_label_csv(Path(test_csv)) if test_csv else []
    classes = folder_classes([lab for _, lab, _ in tr], repr(str(train_csv)))
    if len(classes) < 2:
        raise DataError(f"folder: {str(train_csv)!r} has one class only ({classes[0]!r}); the method learns to tell "
                        f"classes apart: list the images of at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    if te:
        if all(_is_int(c) for c in classes):  # integer classes: 1 and 01 are the same class
            index.update({lab: int(lab) for _, lab, _ in te if _is_int(lab) and 0 <= int(lab) < len(classes)})
        unknown = sorted({lab for _, lab, _ in te if lab not in index})
        if unknown:
            line = next(n for _, lab, n in te if lab == unknown[0])
            raise DataError(f"folder: {str(test_csv)!r} line {line}: label {unknown[0]!r} is not a class of the training "
                            f"CSV{f' (and {len(unknown) - 1} more: ' + ', '.join(map(repr, unknown[1:6])) + ')' if len(unknown) > 1 else ''}; "
                            f"the model can only predict the classes it was trained on: {', '.join(map(repr, classes))}")
    for rows, src in ((tr, train_csv), (te, Path(test_csv) if test_csv else None)):
        seen: dict = {}
        for path, _, line in rows:
            if path in seen:
                raise DataError(f"folder: {str(src)!r} lists {path!r} twice (lines {seen[path]} and {line}); "
                                f"list each image once, the report is keyed by path")
            seen[path] = line
    tr_files = [train_csv.parent / p for p, _, _ in tr]
    te_files = [Path(test_csv).parent / p for p, _, _ in te]
    if te:
        both = {f.resolve() for f in tr_files} & {f.resolve() for f in te_files}
        if both:
            raise DataError(f"folder: {str(min(both))!r} is listed in both the training and the test CSV; "
                            f"a test image must not be trained on")
    y = torch.tensor([index[lab] for _, lab, _ in tr], dtype=torch.int64)
    yte = torch.tensor([index[lab] for _, lab, _ in te], dtype=torch.int64)
    stream = stream_above_gb is not None and len(tr) * 3 * image_size ** 2 > stream_above_gb * 2 ** 30
    if stream:
        from .stream import ImagePaths, sample_mean_std

        for files, src in ((tr_files, train_csv), (te_files, test_csv)):
            for f in files:
                if not f.is_file():
                    raise DataError(f"folder: image {str(f)!r} listed in {str(src)!r} does not exist")
        x = ImagePaths([str(f) for f in tr_files], image_size, image_size, "square")
        xte = ImagePaths([str(f) for f in te_files], image_size, image_size, "square")
        mean, std = sample_mean_std(x)
    else:
        x = _load_images(tr_files, image_size, train_csv)
        xte = _load_images(te_files, image_size, Path(test_csv)) if te else \
            torch.zeros((0, 3, image_size, image_size), dtype=torch.uint8)
        mean = std = ()
    return ImageData(f"folder:{train_csv.name}", x, y, xte, yte, classes=classes, train_labels_known=labels_are_truth,
                     train_paths=[p for p, _, _ in tr], test_paths=[p for p, _, _ in te], mean=mean, std=std)


def load_dataset(cfg) -> ImageData:
    """The dataset named by ``cfg.dataset`` (see the module docstring)."""
    if cfg.dataset == "digits":
        return load_digits()
    if cfg.dataset in ("cifar10", "cifar100"):
        return load_cifar(cfg.dataset, cfg.data_root, cfg.download)
    if cfg.dataset == "folder":
        # noise=none: the CSV's labels are the user's own (their noise is unknown); any other
        # kind adds noise to them, so they are the truth the report can be scored against
        return load_folder(cfg.folder_train_csv, cfg.folder_test_csv, cfg.image_size, labels_are_truth=cfg.noise != "none",
                           stream_above_gb=cfg.stream_above_gb)
    if cfg.dataset == "clothing1m":
        from .clothing1m import load_clothing1m

        return load_clothing1m(cfg.data_root, crop=cfg.image_size, resize=cfg.resize_size)
    if cfg.dataset == "arrays":
        raise DataError("dataset=arrays: the images are in memory; pass them to hallnll.find_label_issues "
                        "(or fit(cfg, data=ImageData(...)))")
    raise DataError(f"unknown dataset {cfg.dataset!r}; use digits, cifar10, cifar100, folder or clothing1m")
