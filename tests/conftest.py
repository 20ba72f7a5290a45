"""Shared fixtures.

Real data only: scikit-learn's digits (always there) and the offline copies
in the shared folder beside the repository (``../shared``), or the same
files staged into the repository's git-ignored ``.data/`` by
``shared/tools/stage-gpu-data``. Tests that need those files are skipped,
with the reason, where neither exists.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

if str(REPO) not in sys.path:  # plain `pytest` as well as `python -m pytest`
    sys.path.insert(0, str(REPO))

# The tests train tiny CNNs on 8x8 images. On a small, shared CPU (2 cores)
# several intra-op threads spend their time waiting on each other: one epoch
# of the digits CNN took ~6 s with 2 threads under load and ~0.4 s with 1.
# HALLNLL_TEST_THREADS=N overrides.
torch.set_num_threads(int(os.environ.get("HALLNLL_TEST_THREADS", "1")))


def _data_layout():
    """(data dir, materialize script) of ../shared, else of the staged .data/."""
    if (SHARED / "data").is_dir():
        return SHARED / "data", SHARED / "tools" / "materialize_cifar10.py"
    staged = REPO / ".data"
    return staged, staged / "materialize_cifar10.py"


SHARED_DATA, MATERIALIZE = _data_layout()
IDN_DIR = SHARED_DATA / "noisy-labels" / "cifar10-classification-idn"
CIFAR_N_DIR = SHARED_DATA / "noisy-labels" / "cifar-n"
CIFAR_JPEG = SHARED_DATA / "cifar10-jpeg"


def shared_file(rel: str) -> Path:
    """A file under the shared data folder, or skip the test saying what is missing."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"offline data {p} not found (needs the shared folder ../shared beside the repo "
                    f"or the files staged into .data/ by shared/tools/stage-gpu-data)")
    return p


@pytest.fixture(scope="session")
def digits():
    """scikit-learn digits as ImageData (1,347 training images, 8x8, 10 classes)."""
    from hallnll.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory):
    """A cifar-10-batches-py/ folder written once per session from the JPEG copy (~10-20 s)."""
    for p in (CIFAR_JPEG / "train.npz", CIFAR_JPEG / "test.npz", MATERIALIZE):
        if not p.exists():
            pytest.skip(f"offline CIFAR-10 copy: {p} not found (needs the shared folder ../shared beside "
                        f"the repo or the files staged into .data/ by shared/tools/stage-gpu-data)")
    root = tmp_path_factory.mktemp("cifar10")
    proc = subprocess.run([sys.executable, str(MATERIALIZE), str(CIFAR_JPEG), str(root)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"materialize_cifar10.py failed:\n{proc.stdout}\n{proc.stderr}"
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    return root


@pytest.fixture(scope="session")
def cifar10(cifar10_root):
    """CIFAR-10 (JPEG q75 copy) as ImageData, read with download off."""
    from hallnll.data import load_cifar

    return load_cifar("cifar10", cifar10_root, download=False)


class HostSync(AssertionError):
    """A tensor value was read on the host where the code must not (see no_host_reads)."""


@pytest.fixture
def no_host_reads(monkeypatch):
    """Make every Python-level read of a tensor value fail (item, float, int, bool, tolist, numpy).

    On CUDA each of these would block the host until the GPU catches up; the
    training loops must not need them inside the iteration loop.
    """
    def guard(name):
        def f(self, *a, **k):
            raise HostSync(f"Tensor.{name}() called: a host round-trip inside the loop")
        return f

    for name in ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, guard(name))

    # indexing with a 0-dim integer tensor reads it on the host (ATen's applySlicing calls item())
    def zero_dim(index):
        items = index if isinstance(index, tuple) else (index,)
        return any(isinstance(i, torch.Tensor) and i.dim() == 0 and not i.is_floating_point() for i in items)

    for name in ("__getitem__", "__setitem__"):
        orig = getattr(torch.Tensor, name)

        def checked(self, index, *a, _orig=orig, _name=name):
            if zero_dim(index):
                raise HostSync(f"Tensor.{_name} with a 0-dim integer tensor: a host round-trip (use a [1] index)")
            return _orig(self, index, *a)

        monkeypatch.setattr(torch.Tensor, name, checked)
