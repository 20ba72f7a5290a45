"""The notebooks' side of the package.

In a notebook, one call after the parameters cell::

    from hallnll.tools.notebook import setup
    stem = setup(threads=threads, figures_dir=figures_dir)

then the cells the notebooks share: :func:`prepare_short` (the config of a
short schedule, its data and noisy labels), :func:`demo_config` (the config
of the one-run notebooks) and :func:`result_row` (a row of a summary table
of finished runs).

For ``hallnll reproduce`` and the tests, :func:`execute` runs a notebook with
papermill in a fresh kernel of this interpreter, whose environment (thread
counts, ``PYTHONPATH``) is given to the kernel alone: nothing of this
process's environment changes. To open the notebooks in Jupyter, give it a
kernel that imports hallnll::

    pip install -e ".[notebooks]"
    python -m ipykernel install --user --name hallnll
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

KERNEL = "hallnll-run"


def setup(threads: int = 0, figures_dir: str = ""):
    """Prepare a notebook's kernel and return ``stem(name)``: where a figure is saved
    (``figures_dir/name``, PNG + PDF), or None when ``figures_dir`` is empty.

    - A notebook opened from a checkout's ``notebooks/`` folder works from the
      repository root, as papermill and ``hallnll reproduce`` run it (the
      params files, ``.data/`` and ``runs/`` are relative to it).
    - ``threads > 0`` sets torch's thread count.
    - tqdm's "IProgress not found" warning (no ipywidgets) is silenced.
    """
    here = Path.cwd()
    if here.name == "notebooks" and (here.parent / "params").is_dir() and (here.parent / "hallnll").is_dir():
        os.chdir(here.parent)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    warnings.filterwarnings("ignore", message="IProgress not found")

    def stem(name: str):
        return Path(figures_dir) / name if figures_dir else None

    return stem


def prepare_short(params: str, epochs: int, warmup_epochs: int, cbased_epochs: int, seed: int = 0, overrides=(),
                  settings=()):
    """The notebooks' short run of ``params``: its config on the schedule
    ``epochs`` (``warmup_epochs`` of warm-up, no lr decay), the noise's CNN
    trained ``cbased_epochs``, ``seed``, no progress bars, then ``overrides``
    and ``settings``; and its data and noisy labels
    (:func:`hallnll.train.prepare`). Returns ``(cfg, data, noisy, noise_report)``."""
    from ..config import load_config
    from ..train import prepare

    sched = [f"epochs={epochs}", f"warmup_epochs={warmup_epochs}", f"cbased_epochs={cbased_epochs}",
             f"seed={seed}", "progress=false", "lr_decay_epoch=0", *overrides]  # short: no lr decay
    cfg = load_config(params, sched + list(settings))
    data, noisy, noise_report = prepare(cfg, progress=False)
    return cfg, data, noisy, noise_report


#: the short schedule of the one-run notebooks (06, 09) when their ``overrides`` are None
DEMO_OVERRIDES = ("epochs=14", "warmup_epochs=8", "lr_decay_epoch=0")  # short: no lr decay


def demo_config(params: str, overrides=None, seed: int = 0):
    """``params`` with ``overrides`` (None: :data:`DEMO_OVERRIDES`), ``seed`` and no
    progress bars: the config of the one-run notebooks."""
    from ..config import load_config

    chosen = list(DEMO_OVERRIDES if overrides is None else overrides)
    return load_config(params, chosen + [f"seed={seed}", "progress=false"])


def _pct(v):
    return 100 * v if v is not None else None


# the columns of the notebooks' summary tables: name -> value of a finished run (hallnll.train.RunResult)
RESULT_COLUMNS = {
    "best acc %": lambda r: 100 * r.summary["best_acc"],
    "last acc %": lambda r: 100 * r.summary["last_acc"],
    "|easy|": lambda r: r.history[-1].get("n_easy"),
    "|labeled|": lambda r: r.history[-1].get("n_labeled"),
    "|clean-hard|": lambda r: r.history[-1].get("n_clean_hard"),
    "easy precision %": lambda r: _pct(r.history[-1].get("precision_easy")),
    "clean-hard precision %": lambda r: _pct(r.history[-1].get("precision_clean_hard")),
    "labeled noise %": lambda r: _pct(r.history[-1].get("labeled_noise_rate")),
    "seconds": lambda r: r.summary["wall_seconds"],
}


def result_row(result, *columns: str) -> dict:
    """One row of a summary table: the ``columns`` (keys of :data:`RESULT_COLUMNS`)
    of a finished run, from its summary and its last metrics row."""
    unknown = [c for c in columns if c not in RESULT_COLUMNS]
    if unknown:
        raise KeyError(f"unknown column(s) {unknown}; choose from {list(RESULT_COLUMNS)}")
    return {c: RESULT_COLUMNS[c](result) for c in columns}


def require() -> None:
    """Raise :class:`hallnll.tools.tables.ReproduceError` unless papermill and ipykernel are installed."""
    from .tables import ReproduceError

    try:
        import ipykernel  # noqa: F401
        import papermill  # noqa: F401
    except ImportError as e:
        raise ReproduceError(f"running notebooks needs papermill and ipykernel ({e}); "
                             f"pip install -e '.[notebooks]' (or pip install 'hallnll[notebooks]')") from None


def _kernel_spec(threads: int) -> dict:
    """This interpreter as a kernel; hallnll importable; ``threads`` for OpenMP/MKL;
    log level ERROR (so no notice about running over TCP)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    env = {"PYTHONPATH": package_parent + (os.pathsep + path if path else "")}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.log_level=ERROR"],
            "display_name": "Python (hallnll)", "language": "python", "env": env}


@contextlib.contextmanager
def kernel(threads: int = 0, transport: str = "tcp"):
    """A kernel manager of this interpreter (:func:`_kernel_spec`) for the block, its kernel
    not started yet: :func:`execute` starts it for the first notebook, later ones run in it;
    shut down at the end of the block. ``transport="ipc"``: Unix sockets in a private
    temporary folder instead of TCP ports (see :func:`execute`)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    with tempfile.TemporaryDirectory(prefix="hallnll-kernel-") as tmp:
        spec = Path(tmp) / "kernels" / KERNEL
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps(_kernel_spec(threads), indent=1))
        extra = {"transport": "ipc", "ip": str(Path(tmp) / "kernel")} if transport == "ipc" else {}
        km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]),
                           **extra)
        try:
            yield km
        finally:
            if km.has_kernel:
                km.shutdown_kernel(now=True)


#: run in a kernel before each notebook after its first (:func:`execute` with ``km``): the
#: user's names gone (``%reset -f``), the working folder the notebook's, matplotlib's figures closed
_RESET = "get_ipython().run_line_magic('reset', '-f')\nimport os as _os\n_os.chdir({cwd!r})\ndel _os\n" \
         "import matplotlib.pyplot as _plt\n_plt.close('all')\ndel _plt"


def execute(notebook, output, parameters: dict, cwd=None, threads: int = 0, start_timeout: int = 60,
            transport: str = "tcp", km=None) -> None:
    """Run ``notebook`` with ``parameters`` (papermill) into ``output``, in ``cwd``
    (default: the working folder), with ``threads`` OpenMP/MKL threads in the kernel.

    ``start_timeout``: seconds the kernel may take to start (papermill's default
    is 60; a busy cluster node can take longer). ``transport="ipc"``: the kernel
    talks over Unix sockets in a private temporary folder instead of TCP ports,
    so kernels started at once on one node cannot pick the same port (SLURM jobs
    use it, :func:`hallnll.tools.jobs.execute`).

    ``km``: a kernel manager of :func:`kernel` to run in (``threads`` and ``transport``
    are then its own). A fresh kernel per notebook by default; several notebooks in one
    kernel skip its start and imports (a few seconds each: the tests run the notebook
    series so): from the second on, the kernel's user names are cleared first
    (``%reset -f``), its working folder set to ``cwd`` and its figures closed; modules
    stay imported.

    Raises papermill's ``PapermillExecutionError`` when a cell fails (the
    executed notebook, with the error, is written all the same).
    """
    import papermill as pm

    cwd = str(cwd or Path.cwd())
    if km is None:
        with kernel(threads, transport) as fresh:
            execute(notebook, output, parameters, cwd, start_timeout=start_timeout, km=fresh)
        return
    if km.has_kernel:
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=start_timeout)
            reply = kc.execute_interactive(_RESET.format(cwd=cwd), timeout=start_timeout, store_history=False)
        finally:
            kc.stop_channels()
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the kernel could not be reset for {notebook}: {reply['content']}")
    pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=KERNEL, km=km, cwd=cwd,
                        progress_bar=False, log_output=False, start_timeout=start_timeout)


def first_error(path) -> str:
    """The first error an executed notebook shows (``ename: evalue``), or ''."""
    try:
        import nbformat

        nb = nbformat.read(str(path), as_version=4)
    except Exception:
        return ""
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                return f"{o.get('ename')}: {o.get('evalue')}"
    return ""
