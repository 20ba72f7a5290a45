"""CIFAR-N human labels (Wei et al., ICLR 2022): the official ``CIFAR-10_human.pt``
/ ``CIFAR-100_human.pt`` dicts and their ``.npz`` copies.

Names: ``random1``, ``random2``, ``random3``, ``aggregate``, ``worst`` (CIFAR-10N)
and ``noisy`` (CIFAR-100N), mapped to the release's keys below.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .sources import DataError

CIFAR_N_KEYS = {
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
    "aggregate": "aggre_label",
    "worst": "worse_label",
    "noisy": "noisy_label",
}


def _read(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"cifar-n: {str(path)!r} not found; get CIFAR-10_human.pt / CIFAR-100_human.pt "
                        f"from the CIFAR-N release (UCSC-REAL/cifar-10-100n) and set cifar_n_file")
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    # The official .pt holds numpy arrays, which torch's safe loader refuses; it
    # is a published data file, so a full unpickle is acceptable here.
    d = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(d, dict):
        raise DataError(f"cifar-n: {str(path)!r} does not hold a dict of label arrays")
    return {k: np.asarray(v) for k, v in d.items()}


def load_cifar_n(path, which: str, clean_labels: torch.Tensor | None = None) -> torch.Tensor:
    """The ``which`` label set of a CIFAR-N file as int64 [50000].

    With ``clean_labels`` (the dataset's own labels), the file's ``clean_label``
    is checked against them, so a file that does not match the images' order
    is refused instead of silently training on shuffled labels.
    """
    if which not in CIFAR_N_KEYS:
        raise DataError(f"cifar-n: unknown label set {which!r}; use one of {', '.join(CIFAR_N_KEYS)}")
    path = Path(path)
    d = _read(path)
    key = CIFAR_N_KEYS[which]
    if key not in d:
        raise DataError(f"cifar-n: {str(path)!r} has no {key!r} ({which}); it holds {', '.join(sorted(d))}. "
                        f"random1/2/3, aggregate and worst are CIFAR-10N, noisy is CIFAR-100N")
    noisy = torch.as_tensor(np.asarray(d[key]).astype(np.int64))
    if clean_labels is not None:
        if len(noisy) != len(clean_labels):
            raise DataError(f"cifar-n: {str(path)!r} has {len(noisy)} labels, the training set {len(clean_labels)}; "
                            f"use the file that belongs to this dataset")
        if "clean_label" in d:
            clean = torch.as_tensor(np.asarray(d["clean_label"]).astype(np.int64))
            agree = (clean == clean_labels.cpu()).float().mean().item()
            if agree < 0.999:
                raise DataError(f"cifar-n: clean_label of {str(path)!r} agrees with the dataset's labels on only "
                                f"{agree:.1%} of images: the file or the image order does not match")
    return noisy
