"""A plain (non-editable) ``pip install .`` carries the params files, the digits
default's labels and the notebooks the commands read, found from any working folder through hallnll.resources."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    src = tmp_path_factory.mktemp("src")  # a copy, so the build leaves nothing in the checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("hallnll", "params", "notebooks"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-cache-dir", "--target", str(target), str(src)],
                          capture_output=True, text=True, timeout=300, cwd=src,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not available")
    assert proc.returncode == 0, proc.stderr
    return target


def test_wheel_ships_params_and_notebooks(installed, tmp_path):
    code = ("import hallnll, hallnll.resources as R\n"
            "print(hallnll.__file__)\n"
            "print(R.folder('params'))\n"
            "print(sorted(p.name for p in R.folder('params').glob('*.yaml')))\n"
            "print(sorted(p.name for p in R.folder('notebooks').glob('*.ipynb')))\n"
            "from hallnll import load_config\n"
            "print(load_config('params/digits-quick.yaml').name, load_config('cifar10-cbased-40').name)\n"
            "from hallnll.noise import load_label_csv\n"
            "print(R.data_file('digits-cbased-40.csv'), len(load_label_csv(R.data_file('digits-cbased-40.csv'))[1]))\n"
            "from hallnll.data import load_digits, sources\n"
            "print(sources.DIGITS_TEST_ROWS, len(load_digits().y_test))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(installed)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    module, params_dir, params, notebooks, names, labels, split = proc.stdout.splitlines()
    assert module.startswith(str(installed)) and params_dir.startswith(str(installed))
    assert params == str(sorted(p.name for p in (ROOT / "params").glob("*.yaml")))
    assert notebooks == str(sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
    assert names == "digits-quick cifar10-cbased-40"
    # the digits default's labels ship too, found by name from any folder
    assert labels.startswith(str(installed)) and labels.endswith("digits-cbased-40.csv 1347")
    assert split.startswith(str(installed)) and split.endswith("digits_test_rows.txt 450")  # the digits split too


def test_importing_hallnll_freezes_the_collector_after_its_imports_and_at_exit():
    """docs/running.md, "Start" and "Exit": the import's objects (torch's) are frozen and the
    collector's own setting comes back; the exit handler runs at exit (before the handlers
    registered before the import), and the process still ends with its own exit code and output."""
    root = str(Path(__file__).resolve().parents[1])
    for enabled in (True, False):
        code = ("import atexit, gc, sys\n"
                "atexit.register(lambda: print('more frozen at exit:', gc.get_freeze_count() > n))\n"
                f"{'' if enabled else 'gc.disable()'}\n"
                "import hallnll\n"
                "n = gc.get_freeze_count()\n"
                "import torch._dynamo\n"  # imported later, not frozen until the exit
                "print('import frozen:', n > 100_000, 'collector on:', gc.isenabled())\n"
                "sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": root})
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout.splitlines() == [f"import frozen: True collector on: {enabled}",
                                            "more frozen at exit: True"], proc.stdout
