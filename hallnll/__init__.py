"""hallnll: learning with instance-dependent noisy labels by hard sample
selection with anchor hallucination — a GPU-first reference implementation.

The public verbs::

    from hallnll import load_config, fit, find_label_issues, issues_from_probs
    cfg = load_config("params/digits-quick.yaml", overrides=["variant=hallnll"])
    result = fit(cfg, out_dir="runs/digits")       # Alg. 1
    print(result.summary["best_acc"])
    issues = find_label_issues(images_uint8, labels)  # a DataFrame, one row per image
    issues = issues_from_probs(labels, pred_probs)    # the same rule on your own model's out-of-sample probabilities

One module per step of the paper: ``noise`` (§4.1), ``selection`` (§3.1 Eq. 1
and §3.3), ``hallucination`` (§3.2 Eq. 2), ``ssl`` (§3.4 Eq. 3), ``run``
(§3.5 Alg. 1: :class:`hallnll.run.Run`, one epoch as the paper's steps) and
``train`` (:func:`fit`, a loop over ``Run.epoch`` with its outputs);
``config`` holds Table 6 (frozen, each setting declared with its allowed
values), ``levers`` the speed options that wrap the eager steps. What runs
around the method (the command line, many runs, the paper's tables, the
bench, the notebooks' helpers) is :mod:`hallnll.tools`.
"""
import atexit
import contextlib
import gc


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic collector paused while a block creates objects that live for the whole
    process (imports: torch's is about a million objects, and the collector's full passes over
    them are a sixth of its time), then those objects moved to the permanent generation
    (``gc.freeze``), where every later collection skips them; the collector's own setting is
    restored. docs/running.md, "Start"."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


with collector_paused():  # these import torch
    from .config import Config, ConfigError, load_config
    from .data import ImageData, DataError, load_dataset

__version__ = "0.1.0"

# At interpreter exit, after the other exit handlers registered since (LIFO), move every object
# to the collector's permanent generation: the collections of Python's shutdown then skip the
# millions of objects torch holds. A process that imported torch and ran a fit took 1.2 s to
# exit, 0.2 s with this (docs/running.md, "Exit"); each CLI command, worker process, notebook
# kernel and SLURM job ends that much sooner. Nothing is lost that Python promises: it does not
# guarantee __del__ for objects still alive at exit, and hallnll closes every file it writes.
atexit.register(gc.freeze)


def make_noisy_labels(cfg, data, device=None, progress=True):
    """Noisy labels and their report for ``cfg.noise`` (see :mod:`hallnll.noise`)."""
    from .noise import make_noisy_labels as _m

    return _m(cfg, data, device=device, progress=progress)


def fit(cfg, out_dir=None, **kwargs):
    """Run Alg. 1 (or the variant ``cfg.variant``); see :func:`hallnll.train.fit`."""
    from .train import fit as _fit

    return _fit(cfg, out_dir, **kwargs)


def find_label_issues(images, labels, **kwargs):
    """A label-issue DataFrame for uint8 images and integer labels; see
    :func:`hallnll.label_issues.find_label_issues`."""
    from .label_issues import find_label_issues as _f

    return _f(images, labels, **kwargs)


def issues_from_probs(labels, pred_probs, **kwargs):
    """A label-issue DataFrame from given labels and one's own model's out-of-sample
    probabilities; see :func:`hallnll.label_issues.issues_from_probs`."""
    from .label_issues import issues_from_probs as _f

    return _f(labels, pred_probs, **kwargs)


__all__ = ["Config", "ConfigError", "load_config", "ImageData", "DataError", "load_dataset",
           "make_noisy_labels", "fit", "find_label_issues", "issues_from_probs", "__version__"]
