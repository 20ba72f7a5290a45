"""Shared fixtures.

Real data only: scikit-learn's digits (always there) and the offline copies
in the shared folder beside the repository (``../shared``), or the same
files staged into the repository's git-ignored ``.data/`` by
``shared/tools/stage-gpu-data``. Tests that need those files are skipped,
with the reason, where neither exists.
"""
from __future__ import annotations

import os
import shutil
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


def made_once(tmp_path_factory, name: str, make) -> Path:
    """The folder ``name``, filled by ``make(folder)`` once per test session, shared by all
    pytest-xdist workers (xdist's documented FileLock recipe: the workers' base folders have
    one parent per session). A worker that asks while another makes it waits for it; a
    ``make`` that fails leaves no folder behind (the next one to ask tries again)."""
    from filelock import FileLock

    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # one process (-n 0): this session's own folder
        root = tmp_path_factory.getbasetemp()
    else:
        root = tmp_path_factory.getbasetemp().parent
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                make(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            done.write_text("ok\n")
    return folder


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory):
    """A cifar-10-batches-py/ folder written once per session (all workers) from the JPEG copy (~10-20 s)."""
    for p in (CIFAR_JPEG / "train.npz", CIFAR_JPEG / "test.npz", MATERIALIZE):
        if not p.exists():
            pytest.skip(f"offline CIFAR-10 copy: {p} not found (needs the shared folder ../shared beside "
                        f"the repo or the files staged into .data/ by shared/tools/stage-gpu-data)")

    def make(root):
        proc = subprocess.run([sys.executable, str(MATERIALIZE), str(CIFAR_JPEG), str(root)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"materialize_cifar10.py failed:\n{proc.stdout}\n{proc.stderr}"

    root = made_once(tmp_path_factory, "cifar10", make)
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    return root


@pytest.fixture(scope="session")
def cifar10(cifar10_root):
    """CIFAR-10 (JPEG q75 copy) as ImageData, read with download off."""
    from hallnll.data import load_cifar

    return load_cifar("cifar10", cifar10_root, download=False)


#: the tiny digits run of tests/test_cluster.py and tests/test_distributed.py (params/digits-quick.yaml):
#: 4 epochs on the first 673 of the 1,347 training images (odd: the two DDP ranks' shards are 337 + 336)
DIGITS_TINY = ["epochs=4", "warmup_epochs=2", "noise=symmetric", "lr_decay_epoch=0", "progress=false",
               "train_subset=673"]


@pytest.fixture(scope="session")
def digits_tiny_seeds(tmp_path_factory):
    """Seeds 0-2 of DIGITS_TINY with --executor process (in this process, one thread), once per
    session for all workers: the local runs the SLURM runs of tests/test_cluster.py must equal,
    and the one-process runs of tests/test_distributed.py."""
    def make(out):
        from hallnll.tools import jobs

        s = jobs.run_seeds(str(REPO / "params" / "digits-quick.yaml"), DIGITS_TINY, out, seeds=3, parallel=1)
        assert all("error" not in x for x in s), s

    return made_once(tmp_path_factory, "digits-tiny-seeds", make)


#: the tiny schedule of `reproduce table5 --scale quick` in the tests (a few seconds per run): 3 epochs
#: (one SSL epoch) on the first 512 of digits' 1,347 training images
TABLE5_TINY = ["epochs=3", "warmup_epochs=2", "cbased_epochs=2", "lr_decay_epoch=0", "train_subset=512"]


def table5_args(where, **kw):
    """The arguments of ``hallnll reproduce table5 --scale quick`` into ``where``/results and /runs."""
    from argparse import Namespace

    d = dict(table="table5", scale="quick", seeds=None, parallel=2, list=False, set=list(TABLE5_TINY),
             results=str(Path(where) / "results"), runs=str(Path(where) / "runs"), executor="process")
    d.update(kw)
    return Namespace(**d)


@pytest.fixture(scope="session")
def table5_quick(tmp_path_factory):
    """``reproduce table5 --scale quick --executor process --parallel 2`` run once per session (all
    workers): tests/test_reproduce.py checks what it writes, tests/test_cluster.py compares the
    SLURM table with its table. Returns (folder, the command's printed output)."""
    import contextlib
    import io

    def make(where):
        from hallnll.tools import reproduce

        before = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"  # the notebooks' kernels: one thread each
        try:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = reproduce.main(table5_args(where))
            (where / "output.txt").write_text(buf.getvalue())
            assert rc == 0, buf.getvalue()
        finally:
            if before is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = before

    where = made_once(tmp_path_factory, "table5-quick", make)
    return where, (where / "output.txt").read_text()


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


# ---------------------------------------------------------------- scheduling over the 2 workers
# `--dist loadgroup` (pyproject): a file's tests run on one worker, in order, so that its
# module fixtures are made once; the tests in SOLO each form a group of their own (the other
# worker takes the rest of their file). Groups start longest first (ORDER), then in file order, so that no long group
# starts last while the other worker idles. Measured with `python -m pytest --durations=0`.
SOLO = (
    "tests/test_fidelity.py::test_ssl_stage_stays_with_cross_entropy_on_clean_cifar",
    "tests/test_levers.py::test_gpu_speed_script_dry_run",
    "tests/test_reproduce.py::test_table5_quick_writes_results_and_does_not_redo_finished_runs",
    "tests/test_cluster.py::test_reproduce_table5_on_slurm_gives_the_process_table",
)
ORDER = (
    "tests/test_fidelity.py::test_ssl_stage_stays_with_cross_entropy_on_clean_cifar",
    "tests/test_cluster.py",
    "tests/test_train.py",
    "tests/test_distributed.py",
    "tests/test_cluster.py::test_reproduce_table5_on_slurm_gives_the_process_table",
    "tests/test_reproduce.py::test_table5_quick_writes_results_and_does_not_redo_finished_runs",
    "tests/test_golden.py",
    "tests/test_notebooks.py",
    "tests/test_speed_levers.py",
    "tests/test_levers.py::test_gpu_speed_script_dry_run",
    "tests/test_fidelity.py",
    "tests/test_levers.py",
    "tests/test_run.py",
    "tests/test_resume.py",
    "tests/test_clothing1m.py",
    "tests/test_label_issues.py",
    "tests/test_warm_start.py",
    "tests/test_reproduce.py",
    "tests/test_noise.py",
)


def _group(nodeid: str) -> str:
    test = nodeid.split("[", 1)[0]
    for solo in SOLO:
        if test == solo or (test.startswith(solo + "::") and "::" not in solo):
            return test
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    rank = {g: i for i, g in enumerate(ORDER)}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item.nodeid)))
    first = {}
    for i, item in enumerate(items):
        first.setdefault(_group(item.nodeid), i)
    items.sort(key=lambda it: (rank.get(_group(it.nodeid), len(ORDER)), first[_group(it.nodeid)]))
