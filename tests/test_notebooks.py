"""Every notebook in notebooks/: committed without outputs, with a `parameters` cell first, and
executed end to end through papermill on digits with tiny parameters (repository root as cwd)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from hallnll.tools import reproduce
from hallnll.tools.notebook import execute, kernel

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SHARED = REPO.parent / "shared" / "data" / "noisy-labels"
STAGED = REPO / ".data" / "noisy-labels"

# Tiny runs: 3 epochs (2 warm-up, one SSL epoch: every SSL-only figure and column has a value) on the
# first 512 of digits' 1,347 training images. The notebooks that train the same run (digits-quick,
# hallnll, seed 0, this schedule) share one folder: 00_quickstart trains RUNS/hallnll (and RUNS/ce),
# 04, 05 and 09 read it back (fit resumes a finished run), 07 trains RUNS/gmm beside it and reads
# RUNS/hallnll, 08's P = 0.6 cell (digits-quick's P and lambda_conf) starts from a copy of it
# (test_notebook_runs). Run alone (-k), each notebook trains what it misses.
SUBSET = ["train_subset=512"]
TINY = dict(epochs=3, warmup_epochs=2, cbased_epochs=2, threads=1, overrides=SUBSET)
TINY_OVERRIDES = ["epochs=3", "warmup_epochs=2", "cbased_epochs=2", "lr_decay_epoch=0", *SUBSET]


def _label_file(rel: str) -> str:
    for base in (STAGED, SHARED):
        if (base / rel).is_file():
            return str(base / rel)
    return ""


def parameters(name: str, tmp: Path) -> dict:
    """Tiny parameters of each notebook; notebooks of the same run share its folder (tmp/runs/hallnll)."""
    runs = tmp / "runs"
    shared_run = str(runs / "hallnll")
    return {
        "00_quickstart": dict(TINY, out_dir=str(runs), figures_dir=str(tmp / "figures")),
        "01_label_noise": dict(cbased_epochs=2, threads=1, n_examples=8,
                               cbased_csv=_label_file("cifar10-classification-idn/dependent0.4.csv"),
                               cifar_n_file=_label_file("cifar-n/CIFAR-10_human.npz")),
        "02_warmup_gmm": dict(warmup_epochs=2, cbased_epochs=2, threads=1, overrides=SUBSET),
        "03_easy_selection": dict(warmup_epochs=2, cbased_epochs=2, threads=1, p_values=[0.3, 0.4], overrides=SUBSET),
        "04_hallucination": dict(TINY, out_dir=shared_run, hal_iters=5),
        "05_hard_selection": dict(TINY, out_dir=shared_run, lambdas=[0.8, 0.95], n_examples=8),
        "05b_mixmatch": dict(warmup_epochs=2, cbased_epochs=2, threads=1, n_show=4, overrides=["hal_iters=5", *SUBSET]),
        "06_training": dict(overrides=TINY_OVERRIDES, out_dir=str(tmp / "06"), seed=1, threads=1),
        "07_ablation": dict(TINY, out_dir=str(runs), variants=["gmm", "hallnll"]),
        "08_hyperparameters": dict(TINY, out_dir=str(tmp / "08"), p_values=[0.5, 0.6], lambda_conf_values=[0.8],
                                   p_fixed=0.6),
        "09_figures": dict(overrides=TINY_OVERRIDES, out_dir=shared_run, figures_dir=str(tmp / "figures"),
                           n_real=60, m_anchors=10, tsne_iters=100, n_fig5=4, n_fig7=8, threads=1),
        "10_tables": dict(results_dir=str(tmp / "results"), threads=1),
    }[name]


def test_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    for expected in ("00_quickstart", "01_label_noise", "02_warmup_gmm", "03_easy_selection", "04_hallucination",
                     "05_hard_selection", "05b_mixmatch", "06_training", "07_ablation", "08_hyperparameters",
                     "09_figures", "10_tables"):
        assert expected in names
    for n in names:  # a new notebook needs its tiny parameters here
        parameters(n, Path("/tmp"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    first = nb.cells[0]
    assert first.cell_type == "code" and "parameters" in first.metadata.get("tags", []), \
        f"{path.name}: the first cell must be a code cell tagged 'parameters'"
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    for line in first.source.splitlines():  # papermill parses one '=' per line
        assert line.count("=") <= 1, f"{path.name}: papermill cannot parse the parameter line {line!r}"
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, f"{path.name}: cell {i} has outputs"
    assert any(c.cell_type == "markdown" for c in nb.cells)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


@pytest.fixture(scope="module")
def one_kernel():
    """One kernel of this interpreter (one thread) for the whole series: each notebook skips a
    kernel's start and the imports of torch, scikit-learn and torch's compiler (about 4 s of
    CPU each). Before each notebook after the first, execute() clears the kernel's names
    (%reset -f), so a notebook that leans on another's variables or imports fails as in a
    fresh kernel; hallnll reproduce runs each notebook in a fresh kernel
    (tests/test_reproduce.py, tests/test_cluster.py)."""
    with kernel(threads=1) as km:
        yield km
        pid = km.provisioner.pid if km.has_kernel else None
    # the block shut the kernel down (as execute() does with the fresh kernel of each notebook;
    # before, a notebook's kernel lived on until the process that ran it ended)
    assert pid is not None and not km.has_kernel and not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, workdir, one_kernel):
    out = workdir / f"{path.stem}.ipynb"
    params = parameters(path.stem, workdir)
    if path.stem == "10_tables":  # one table with results (made-up numbers), the others not run yet
        rows = [dict(r, scale="quick", ours_mean=80.0 + i, ours_std=0.5, n_seeds=2, seeds="0 1",
                     diff=80.0 + i - r["paper_mean"], params="", overrides="", runs="", note="", error="")
                for i, r in enumerate(reproduce.paper_rows("table5"))]
        reproduce.write_results("table5", rows, workdir / "results", "quick")
    if path.stem == "08_hyperparameters" and (workdir / "runs" / "hallnll" / "summary.json").is_file():
        # its (P 0.6, lambda_conf 0.8) cell is the shared run: fit resumes the finished copy
        shutil.copytree(workdir / "runs" / "hallnll", workdir / "08" / "p0.6-lc0.8", dirs_exist_ok=True)
    execute(path, out, params, cwd=REPO, km=one_kernel)  # the series' kernel (one thread), its names cleared
    nb = nbformat.read(str(out), as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert images >= 1, f"{path.stem} drew no figure"
    if path.stem == "06_training":
        s = json.loads((workdir / "06" / "summary.json").read_text())
        assert s["seed"] == 1 and s["epochs"] == 3
        assert (workdir / "06" / "metrics.jsonl").is_file() and (workdir / "06" / "labels.csv").is_file()
    if path.stem == "09_figures":
        for f in ("fig4_tsne", "fig5_anchors", "fig6_correction", "fig7_hard_examples"):
            assert (workdir / "figures" / f"{f}.png").is_file() and (workdir / "figures" / f"{f}.pdf").is_file()


def test_a_notebook_in_the_series_kernel_does_not_see_the_names_of_the_one_before(one_kernel, tmp_path):
    """execute(km=...) clears the kernel's names before each notebook: what a notebook leaves
    behind (a variable, an imported name) is gone for the next, which runs in its own cwd."""
    from nbformat.v4 import new_code_cell, new_notebook

    def notebook(name, code):
        nb = new_notebook(cells=[new_code_cell("x = 1", metadata={"tags": ["parameters"]}), new_code_cell(code)])
        nbformat.write(nb, str(tmp_path / f"{name}.ipynb"))
        return tmp_path / f"{name}.ipynb"

    execute(notebook("a", "import numpy as np\nleft = 1"), tmp_path / "a.out.ipynb", {}, cwd=REPO, km=one_kernel)
    execute(notebook("b", f"import os\nassert 'left' not in globals() and 'np' not in globals(), sorted(globals())\n"
                          f"assert os.getcwd() == {str(tmp_path)!r}, os.getcwd()"), tmp_path / "b.out.ipynb", {},
            cwd=tmp_path, km=one_kernel)
