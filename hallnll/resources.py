"""The files the package ships beside its code: the params files (one per
column of Table 6, and the digits default), the digits default's noisy labels
(``params/digits-cbased-40.csv``) and the notebooks.

In a source checkout they are the repository's ``params/`` and ``notebooks/``
folders, the ones the README shows; a wheel (``pip install .``) carries the
same files as ``hallnll/params`` and ``hallnll/notebooks`` (a setuptools
package-dir mapping in pyproject.toml, so the repository holds one copy), read
here through :mod:`importlib.resources`.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

KINDS = {"params": ".yaml", "notebooks": ".ipynb"}


def folder(kind: str) -> Path:
    """The folder of the shipped ``params`` files or ``notebooks``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of shipped file {kind!r}; use one of {', '.join(KINDS)}")
    installed = resources.files("hallnll") / kind
    if installed.is_dir():  # a wheel: hallnll/params, hallnll/notebooks
        return Path(str(installed))
    checkout = Path(__file__).resolve().parents[1] / kind  # a source checkout (editable install)
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"the package's {kind}/ folder is missing (looked in {installed} and {checkout}); "
                            f"reinstall hallnll (pip install .) or run from its repository")


def names(kind: str) -> list:
    """Names (without suffix) of the shipped files of ``kind``."""
    return sorted(p.stem for p in folder(kind).glob("*" + KINDS[kind]))


def shipped(kind: str, name: str) -> Path:
    """The shipped file ``name`` of ``kind`` (``"digits-quick"``, ``"params/digits-quick.yaml"``
    and ``"digits-quick.yaml"`` all name the same params file)."""
    stem = Path(name).name
    path = folder(kind) / (stem if stem.endswith(KINDS[kind]) else stem + KINDS[kind])
    if not path.is_file():
        raise FileNotFoundError(f"no shipped {kind} file {name!r}; shipped: {', '.join(names(kind))}")
    return path


def params_path(name) -> Path:
    """A params file: ``name`` itself when that path exists, else the shipped file of that name.

    So ``params/digits-quick.yaml`` works from the repository root, from any
    other folder and after a plain ``pip install .``, and so does ``digits-quick``.
    """
    p = Path(name).expanduser()
    if p.is_file():
        return p
    try:
        return shipped("params", str(name))
    except FileNotFoundError:
        return p  # the caller reports the missing file


def data_file(name) -> Path:
    """A file a params file names (``noise_file``): ``name`` itself when that path
    exists, else the file of that name shipped beside the params files (so the
    digits default's ``noise_file: digits-cbased-40.csv`` is found from any folder
    and after a plain ``pip install .``); else ``name`` (the caller reports it missing)."""
    p = Path(name).expanduser()
    if p.is_file() or not str(name):
        return p
    beside = folder("params") / p.name
    return beside if p.name == str(name) and beside.is_file() else p
