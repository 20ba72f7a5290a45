"""Label files: the ``label,label_noisy`` CSV of the published classification-based
labels (Chen et al.), which ``hallnll noise`` writes and ``noise=file`` reads.

(The CIFAR-N human labels are read by :func:`hallnll.data.load_cifar_n`, with
the dataset they belong to.)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .generators import NoiseError

CSV_HEADER = ("label", "label_noisy")


def load_label_csv(path, num_classes: Optional[int] = None, clean: Optional[torch.Tensor] = None):
    """Read a ``label,label_noisy`` CSV (the format of the published C-based labels).

    Returns ``(clean_from_file, noisy)`` as int64 CPU tensors. With
    ``num_classes`` every label must lie in [0, C); with ``clean`` (the
    dataset's labels) the file must have one row per training image and its
    ``label`` column must equal them, so a file made for another dataset or
    another image order is refused.
    """
    p = Path(path).expanduser()
    name = str(p)
    if not p.is_file():
        raise NoiseError(f"noise file {name!r} not found; set noise_file to a CSV with header "
                         f"label,label_noisy (e.g. dependent0.4.csv of Chen et al.) or write one "
                         f"with `hallnll noise --out FILE.csv`")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise NoiseError(f"noise file {name!r} cannot be read as text: {e}") from None
    lines = text.splitlines()
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    if tuple(header[:2]) != CSV_HEADER:
        raise NoiseError(f"noise file {name!r}: header is {lines[0] if lines else '(empty file)'!r}, expected "
                         f"'label,label_noisy' (column 1 the clean label, column 2 the noisy label)")
    body = [ln for ln in lines[1:] if ln.strip()]
    if not body:
        raise NoiseError(f"noise file {name!r} has a header but no rows")
    try:
        arr = np.array([ln.split(",")[:2] for ln in body], dtype=np.int64)
    except ValueError:
        for i, ln in enumerate(body):
            parts = ln.split(",")
            try:
                if len(parts) < 2:
                    raise ValueError
                int(parts[0]), int(parts[1])
            except ValueError:
                raise NoiseError(f"noise file {name!r}: row {i + 1} ({ln!r}) is not two integer labels") from None
        raise NoiseError(f"noise file {name!r}: rows are not two integer labels each") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise NoiseError(f"noise file {name!r}: every row needs two integer labels label,label_noisy")
    file_clean = torch.from_numpy(np.ascontiguousarray(arr[:, 0]))
    noisy = torch.from_numpy(np.ascontiguousarray(arr[:, 1]))
    lo = int(arr.min())
    if lo < 0 or (num_classes is not None and int(arr.max()) >= num_classes):
        bad_rows = np.nonzero((arr < 0).any(1) | ((arr >= num_classes).any(1) if num_classes is not None else False))[0]
        r = int(bad_rows[0])
        rng = f"[0, {num_classes})" if num_classes is not None else "[0, C)"
        raise NoiseError(f"noise file {name!r}: row {r + 1} ({body[r]!r}) has a label outside {rng}; "
                         f"the file belongs to a dataset with more classes, or is corrupt")
    if clean is not None:
        clean = torch.as_tensor(clean).long().cpu()
        if len(file_clean) != len(clean):
            raise NoiseError(f"noise file {name!r} has {len(file_clean)} rows, the training set has {len(clean)}; "
                             f"use the label file made for this dataset (one row per training image, "
                             f"in the dataset's order)")
        diff = file_clean != clean
        if bool(diff.any()):
            first = int(diff.nonzero()[0, 0])
            raise NoiseError(f"noise file {name!r}: its label column disagrees with the dataset's labels on "
                             f"{int(diff.sum())} of {len(clean)} rows (first at row {first + 1}: file {int(file_clean[first])}, "
                             f"dataset {int(clean[first])}); the file was made for another dataset or image order")
    return file_clean, noisy


def save_label_csv(path, clean: torch.Tensor, noisy: torch.Tensor) -> Path:
    """Write ``label,label_noisy`` rows atomically (a temporary file, then a rename).

    Nothing is written unless both label vectors are valid (1-D, integer,
    non-negative, equally long).
    """
    clean_t = torch.as_tensor(clean)
    noisy_t = torch.as_tensor(noisy)
    for what, y in (("clean labels", clean_t), ("noisy labels", noisy_t)):
        if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise NoiseError(f"save_label_csv: {what} must be a 1-D integer tensor, got {y.dtype} {tuple(y.shape)}")
        if y.numel() and int(y.min()) < 0:
            raise NoiseError(f"save_label_csv: {what} contain a negative label")
    if clean_t.numel() != noisy_t.numel():
        raise NoiseError(f"save_label_csv: {clean_t.numel()} clean labels but {noisy_t.numel()} noisy labels")
    p = Path(path).expanduser()
    if p.is_dir():
        raise NoiseError(f"--out {str(p)!r} is a folder; give a file name such as labels.csv")
    arr = np.stack([clean_t.long().cpu().numpy(), noisy_t.long().cpu().numpy()], 1)
    body = "\n".join(f"{a},{b}" for a, b in arr.tolist())
    text = ",".join(CSV_HEADER) + "\n" + body + ("\n" if body else "")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p
