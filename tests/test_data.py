"""hallnll.data on real data: digits, a folder of PNGs, the offline CIFAR-10 copy and
the published noisy-label files (C-based IDN of Chen et al., CIFAR-N)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from hallnll import noise as N
from hallnll.data import (CIFAR10_CLASSES, CIFAR_N_KEYS, DataError, load_cifar, load_cifar_n, load_digits,
                          load_folder)

from conftest import shared_file

# CIFAR-10N noise rates published by Wei et al. (ICLR 2022) and in ../shared/data/README.md
CIFAR10N_RATES = {"aggregate": 0.0901, "random1": 0.1723, "random2": 0.1812, "random3": 0.1764, "worst": 0.4021}


# ---------------------------------------------------------------- digits
def test_digits_shapes_and_dtypes(digits):
    d = digits
    assert tuple(d.x_train.shape) == (1347, 1, 8, 8) and d.x_train.dtype == torch.uint8
    assert tuple(d.x_test.shape) == (450, 1, 8, 8) and d.x_test.dtype == torch.uint8
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    assert d.num_classes == 10 and d.in_channels == 1
    assert set(d.y_train.tolist()) == set(range(10)) and int(d.x_train.max()) == 255
    assert len(d.mean) == len(d.std) == 1 and 0 < d.mean[0] < 1
    assert torch.equal(load_digits().y_train, d.y_train)  # fixed split


def test_digits_are_scikit_learns_images_and_split_read_without_importing_it(digits):
    """The bundled CSV read directly and the shipped split equal scikit-learn's load_digits and
    train_test_split(test_size=450, random_state=0, stratify=y); a process that loads digits
    does not import scikit-learn."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    sk = sk_digits()
    x = torch.from_numpy(np.round(sk.images * (255.0 / 16.0)).astype(np.uint8)[:, None])
    tr, te = train_test_split(np.arange(len(sk.target)), test_size=450, random_state=0, stratify=sk.target)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    assert torch.equal(digits.x_train, x[tr]) and torch.equal(digits.x_test, x[te])
    y = torch.from_numpy(sk.target.astype(np.int64))
    assert torch.equal(digits.y_train, y[tr]) and torch.equal(digits.y_test, y[te])
    code = "import sys; from hallnll.data import load_digits; load_digits(); print('sklearn' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and proc.stdout.split() == ["False"], proc.stdout + proc.stderr


# ---------------------------------------------------------------- CIFAR (missing)
def test_load_cifar_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", tmp_path, download=False)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and str(tmp_path) in msg
    assert "data_root" in msg and "download=true" in msg and "materialize_cifar10.py" in msg
    with pytest.raises(DataError, match="cifar-100-python"):
        load_cifar("cifar100", tmp_path, download=False)
    with pytest.raises(DataError, match="unknown CIFAR variant"):
        load_cifar("cifar11", tmp_path, download=False)


def test_load_cifar_incomplete_folder(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="data_batch_1.*incomplete"):
        load_cifar("cifar10", tmp_path, download=False)


# ---------------------------------------------------------------- folder
def _write_pngs(root, spec):
    """spec: list of (relative path, label, (h, w), colour); returns the CSV rows."""
    from PIL import Image

    rows = []
    for rel, label, (h, w), colour in spec:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), colour).save(p)
        rows.append((rel, label))
    return rows


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["path", "label"])
        wr.writerows(rows)


def test_load_folder_named_classes_and_resize(tmp_path):
    spec = [(f"img/cat_{i}.png", "cat", (10, 14), (200, 10, 10)) for i in range(6)]
    spec += [(f"img/dog_{i}.png", "dog", (20, 9), (10, 200, 10)) for i in range(4)]
    _write_csv(tmp_path / "train.csv", _write_pngs(tmp_path, spec))
    d = load_folder(tmp_path / "train.csv", image_size=16)
    assert d.classes == ["cat", "dog"] and d.num_classes == 2 and not d.train_labels_known
    # no test CSV: every image is a training image (no hidden split), none is a test image
    assert tuple(d.x_train.shape) == (10, 3, 16, 16) and tuple(d.x_test.shape) == (0, 3, 16, 16)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert d.y_train.tolist() == [0] * 6 + [1] * 4 and d.train_paths == [r for r, *_ in spec]
    # the pixels are the images' colours (red cats, green dogs), i.e. labels line up with images
    red = d.x_train[:, 0].float().mean((1, 2)) > 100
    assert torch.equal(red, d.y_train == 0)


def test_load_folder_integer_labels_and_test_csv(tmp_path):
    tr = _write_pngs(tmp_path, [(f"a{i}.png", str(i % 3), (8, 8), (i * 20, 0, 0)) for i in range(6)])
    te = _write_pngs(tmp_path, [(f"t{i}.png", str(i % 3), (12, 12), (0, 0, 50)) for i in range(3)])
    _write_csv(tmp_path / "train.csv", tr)
    _write_csv(tmp_path / "test.csv", te)
    d = load_folder(tmp_path / "train.csv", tmp_path / "test.csv", image_size=8)
    assert d.classes == ["0", "1", "2"]
    assert d.y_train.tolist() == [0, 1, 2, 0, 1, 2] and d.y_test.tolist() == [0, 1, 2]
    assert tuple(d.x_test.shape) == (3, 3, 8, 8)


def test_load_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_folder(tmp_path / "nope.csv")
    (tmp_path / "bad.csv").write_text("file,class\na.png,0\n")
    with pytest.raises(DataError, match="path,label"):
        load_folder(tmp_path / "bad.csv")
    _write_csv(tmp_path / "missing.csv", [("ghost.png", "0"), ("ghost2.png", "1")])  # two classes: one is refused first
    with pytest.raises(DataError, match="ghost.png"):
        load_folder(tmp_path / "missing.csv")


# ---------------------------------------------------------------- published label files
@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3, 0.4])
def test_published_cbased_csv(rate):
    path = shared_file(f"noisy-labels/cifar10-classification-idn/dependent{rate}.csv")
    clean, noisy = N.load_label_csv(path, num_classes=10)
    assert len(clean) == len(noisy) == 50000
    assert int((clean != noisy).sum()) == round(rate * 50000)  # exactly 10/20/30/40%
    assert torch.equal(torch.bincount(clean, minlength=10), torch.full((10,), 5000))
    rep = N.report(clean, noisy, 10, "file", None, None)
    assert f"{rate:.2%}" in rep.summary()


def test_cifar10n_npz_every_key():
    path = shared_file("noisy-labels/cifar-n/CIFAR-10_human.npz")
    clean = torch.from_numpy(np.load(path)["clean_label"])
    for which, rate in CIFAR10N_RATES.items():
        noisy = load_cifar_n(path, which, clean_labels=clean)
        assert noisy.dtype == torch.int64 and noisy.shape == (50000,)
        assert (noisy != clean).float().mean().item() == pytest.approx(rate, abs=1e-4), which
    with pytest.raises(DataError, match="no 'noisy_label'"):
        load_cifar_n(path, "noisy")
    with pytest.raises(DataError, match="unknown label set"):
        load_cifar_n(path, "worse")
    assert set(CIFAR_N_KEYS) == set(CIFAR10N_RATES) | {"noisy"}


def test_cifar100n_npz():
    path = shared_file("noisy-labels/cifar-n/CIFAR-100_human.npz")
    clean = torch.from_numpy(np.load(path)["clean_label"])
    noisy = load_cifar_n(path, "noisy", clean_labels=clean)
    assert (noisy != clean).float().mean().item() == pytest.approx(0.402, abs=1e-4)
    assert int(noisy.max()) == 99


def test_cifar_n_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found.*cifar_n_file"):
        load_cifar_n(tmp_path / "CIFAR-10_human.pt", "worst")


# ---------------------------------------------------------------- CIFAR-10, official order
def test_cifar10_offline_copy_in_official_order(cifar10):
    d = cifar10
    assert tuple(d.x_train.shape) == (50000, 3, 32, 32) and d.x_train.dtype == torch.uint8
    assert tuple(d.x_test.shape) == (10000, 3, 32, 32) and d.x_test.dtype == torch.uint8
    assert d.y_train.dtype == torch.int64 and d.y_test.shape == (10000,)
    assert d.classes == CIFAR10_CLASSES and d.num_classes == 10
    # per-channel statistics of CIFAR-10 (the JPEG copy is within a hair of them)
    assert np.allclose(d.mean, (0.4914, 0.4822, 0.4465), atol=0.01)

    csv_clean, _ = N.load_label_csv(shared_file("noisy-labels/cifar10-classification-idn/dependent0.4.csv"),
                                    10, clean=d.y_train)
    assert torch.equal(csv_clean, d.y_train)
    npz = shared_file("noisy-labels/cifar-n/CIFAR-10_human.npz")
    assert torch.equal(torch.from_numpy(np.load(npz)["clean_label"]), d.y_train)

    worst = load_cifar_n(npz, "worst", clean_labels=d.y_train)
    assert (worst != d.y_train).float().mean().item() == pytest.approx(0.4021, abs=1e-4)
    shuffled = d.y_train[torch.randperm(50000, generator=torch.Generator().manual_seed(0))]
    with pytest.raises(DataError, match="does not match"):
        load_cifar_n(npz, "worst", clean_labels=shuffled)
    with pytest.raises(N.NoiseError, match="disagrees"):
        N.load_label_csv(shared_file("noisy-labels/cifar10-classification-idn/dependent0.4.csv"), 10,
                         clean=shuffled)


def test_cifar10_make_noisy_labels_from_published_files(cifar10):
    from hallnll.config import load_config

    csv_path = shared_file("noisy-labels/cifar10-classification-idn/dependent0.4.csv")
    cfg = load_config(overrides=["dataset=cifar10", "noise=file", f"noise_file={csv_path}"])
    noisy, rep = N.make_noisy_labels(cfg, cifar10, progress=False)
    assert rep.actual_rate == pytest.approx(0.4) and noisy.shape == (50000,)
    npz = shared_file("noisy-labels/cifar-n/CIFAR-10_human.npz")
    cfg = load_config(overrides=["dataset=cifar10", "noise=cifar-n", "cifar_n=aggregate", f"cifar_n_file={npz}"])
    noisy, rep = N.make_noisy_labels(cfg, cifar10, progress=False)
    assert rep.actual_rate == pytest.approx(0.0901, abs=1e-4)


def test_ptd_on_cifar10(cifar10):
    d = cifar10
    noisy = N.ptd(d.x_train, d.y_train, 10, 0.2, seed=1)
    rep = N.report(d.y_train, noisy, 10, "ptd", 0.2, 1)
    assert abs(rep.actual_rate - 0.2) < 0.02, rep.actual_rate
    # instance-dependent: every class sends its flipped samples to several classes
    off = rep.counts.clone()
    off.fill_diagonal_(0)
    assert ((off > 0).sum(1) >= 2).all()
