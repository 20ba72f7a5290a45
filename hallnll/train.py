"""Training (§3.5, Alg. 1) end to end: :func:`fit` and its outputs.

:func:`fit` loads the data and the noisy labels (:func:`prepare`), builds a
:class:`hallnll.run.Run` (the state of the run, its epoch as the steps of
Alg. 1) and calls :meth:`Run.epoch` until ``cfg.epochs``; with ``out_dir`` it
writes ``config.yaml``, ``noise_report.txt``, ``noisy_labels.csv`` (where the
clean labels are known), ``metrics.jsonl``, ``summary.json``, ``labels.csv``
and ``checkpoint.pt`` (every ``checkpoint_every`` epochs and at the end), from
which an interrupted run resumes exactly. Before anything is prepared or
written, a checkpoint in ``out_dir`` is read and checked
(:func:`read_checkpoint`, :func:`check_resumable`): a damaged file (its
SHA-256 is written in it and checked), or one made with settings that change
results or with other labels, raises one :class:`CheckpointError`. Everything
runs with ``cfg.threads`` CPU threads (:func:`cpu_threads`) and, with
``out_dir``, under the folder's run lock (:func:`hallnll.lock.folder_lock`:
a second run into the same folder is refused at once). A resumed run says so
(on stderr); a finished one, run again, trains nothing, regenerates no noise
and rewrites nothing where its results are all there. ``resume=False``
removes the folder's old outputs (:data:`RUN_OUTPUTS`, the checkpoint last)
just before the new run's first file is written, so the folder never holds
two runs.

The variants of Table 5 (``cfg.variant``): ``ce`` cross-entropy on the noisy
labels throughout; ``gmm`` labeled = omega > gmm_threshold (DivideMix without
co-training, row 1); ``easy`` the class-balanced easy subset of Eq. 1 (row 2);
``hallnll`` easy U clean-hard with corrected labels (row 3, the full method).
"""
from __future__ import annotations

import contextlib
import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import distributed, engine, reporting
from .config import GENERATED_NOISE, LEGACY_VALUES, RESULT_FREE, Config, inert_settings
from .data import ImageData, load_dataset
from .noise import make_noisy_labels, report, save_label_csv
from .lock import folder_lock
from .run import CheckpointError, Run, TrainingError

__all__ = ["RunResult", "TrainingError", "CheckpointError", "prepare", "fit", "cpu_threads", "WARMUP_FREE"]


@dataclass
class RunResult:
    summary: dict
    history: list
    out_dir: Optional[Path]
    model: torch.nn.Module
    labels: dict = field(default_factory=dict)  # given/corrected/easiness/subset/predicted tensors
    anchors: Optional[dict] = None  # last epoch's S_hal (hallnll.run.anchor_set), when an epoch ran here
    run: Optional[Run] = None  # the run in its final state: its steps work on the trained model
    finished_before: bool = False  # out_dir held this finished run already: nothing ran or was rewritten


#: what a run writes into its folder, in the order ``resume=False`` removes them (the checkpoint last)
RUN_OUTPUTS = ("summary.json", "labels.csv", "metrics.jsonl", "noisy_labels.csv", "noise_report.txt",
               "config.yaml", "checkpoint.pt")


@contextlib.contextmanager
def cpu_threads(n: int):
    """torch's intra-op CPU threads set to ``n`` inside the block and restored after
    (``n = 0``: left alone). Every command runs under ``cfg.threads``."""
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def prepare(cfg: Config, data: ImageData | None = None, noisy: torch.Tensor | None = None, progress=None):
    """Load the data and the noisy labels named by ``cfg`` (or take and check the given ones),
    with ``cfg.threads`` CPU threads (regenerated noise depends on the thread count)."""
    given = noisy is not None
    with cpu_threads(cfg.threads):
        if data is None:
            data = load_dataset(cfg)
        if not given:
            noisy, rep = make_noisy_labels(cfg, data, progress=cfg.progress if progress is None else progress)
    if given:
        noisy = torch.as_tensor(noisy, dtype=torch.int64).cpu()
        if cfg.train_subset and len(noisy) == min(cfg.train_subset, len(data.y_train)) < len(data.y_train):
            data = data.head(cfg.train_subset, cfg.test_subset)  # labels given for the subset only
        if noisy.shape != data.y_train.shape:
            raise ValueError(f"noisy labels have shape {tuple(noisy.shape)}, the training set {tuple(data.y_train.shape)}")
        if noisy.min() < 0 or noisy.max() >= data.num_classes:
            raise ValueError(f"noisy labels must lie in [0, {data.num_classes}); got {int(noisy.min())}..{int(noisy.max())}")
        rep = report(data.y_train, noisy, data.num_classes, "given", float((noisy != data.y_train).float().mean()), None)
    if (cfg.train_subset and len(noisy) > cfg.train_subset) or (cfg.test_subset and len(data.y_test) > cfg.test_subset):
        # the labels were made for the whole set; both are cut the same way
        n_all = len(noisy)
        data = data.head(cfg.train_subset, cfg.test_subset)
        noisy = noisy[:len(data.y_train)]
        if len(noisy) < n_all:
            note = f"the first {len(noisy)} of {n_all} training images" + (f"; {rep.note}" if rep.note else "")
            rep = report(data.y_train, noisy, data.num_classes, rep.kind, rep.target_rate, rep.seed, note)
    return data, noisy, rep


def labels_text(cfg: Config, data: ImageData, noise_report) -> str:
    """``noise_report.txt``: the noise report where the clean labels are known; for a
    user's own labels what they are, since their noise rate cannot be measured."""
    if data.train_labels_known:
        return str(noise_report) + "\n"
    counts = torch.bincount(data.y_train, minlength=data.num_classes).tolist()
    per_class = ", ".join(f"{c}: {n}" for c, n in zip(data.classes, counts))
    return (f"labels: as given in {cfg.folder_train_csv or data.name} ({data.name}: {len(data.y_train)} images, "
            f"{data.num_classes} classes); "
            f"no clean labels, so their noise rate is unknown\n  images per given class: {per_class}\n")


def read_checkpoint(path) -> dict:
    """The state saved in ``path``, read onto the CPU as :meth:`Run.load` reads it (the
    model's and optimisers' ``load_state_dict`` move their tensors to the run's device),
    or one :class:`CheckpointError` naming the file and the way out."""
    try:
        state = reporting.load_checkpoint(path)
        if not isinstance(state, dict) or not {"model", "epoch", "noisy", "config"} <= set(state):
            raise ValueError("not a hallnll checkpoint")
    except Exception as e:  # truncated, not a torch file, another program's file
        raise CheckpointError(f"cannot resume from {str(path)!r}: it is damaged or not a hallnll checkpoint "
                              f"({type(e).__name__}: {str(e)[:200]}); delete it or run again with --no-resume "
                              f"(resume=False) to start this run over") from None
    return state


def _changed_settings(cfg: Config, state: dict, free) -> tuple:
    """``(saved, keys)``: the settings ``state`` was made with (a key it lacks at the value
    that reproduces a run made before the key existed) and those of ``cfg`` that differ,
    leaving out ``free`` and the settings its noise kind does not read; ``lr_decay_epoch``
    differs only where the epochs done had another learning rate under the two."""
    saved = Config().to_dict() | LEGACY_VALUES | dict(state["config"])
    now = cfg.to_dict()
    same_lr = all(engine.step_lr(1.0, t, int(saved.get("lr_decay_epoch") or 0)) == engine.step_lr(1.0, t, cfg.lr_decay_epoch)
                  for t in range(int(state["epoch"])))
    inert = inert_settings(now) if saved.get("noise") == now["noise"] else set()
    skip = (set(free) | inert) - {"lr_decay_epoch"}
    return saved, [k for k in now if k not in skip and saved.get(k) != now[k] and not (k == "lr_decay_epoch" and same_lr)]


def check_resumable(cfg: Config, state: dict, path) -> None:
    """Refuse a checkpoint made with settings that change results (all but
    :data:`hallnll.config.RESULT_FREE`), or one already past ``cfg.epochs``.

    ``lr_decay_epoch`` may change when the epochs already run had the same
    learning rate under both (a run stopped before its decay, extended with
    more epochs: ``lr_decay_epoch`` must lie below ``epochs``)."""
    if state["epoch"] > cfg.epochs:
        raise CheckpointError(f"{str(path)!r} has already run {state['epoch']} epochs, more than epochs={cfg.epochs}; "
                              f"set epochs >= {state['epoch']}, another --out, or --no-resume")
    saved, diff = _changed_settings(cfg, state, RESULT_FREE)
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(cfg, k)!r}" for k in diff[:8])
        raise CheckpointError(f"{str(path)!r} was made with other settings ({changes}{', ...' if len(diff) > 8 else ''}); "
                              f"resuming would mix two runs. Use the same settings, another --out, or --no-resume "
                              f"(resume=False) to start over in this folder")


#: Settings that the warm-up (Alg. 1 lines 2-3, cross-entropy epochs) does not read: a
#: run that differs from a warm-up checkpoint only in these (and in RESULT_FREE) may
#: start from it (``fit(..., warm_start=...)``) and gives what training from scratch
#: gives, epoch for epoch (tests/test_warm_start.py). The hallucinator h_phi is built (and
#: seeded) at the start of every run but first trained after the warm-up, so with one
#: network its settings are free too: the run keeps its own, fresh h_phi. With two
#: networks the second is seeded after the first's h_phi, so h_phi's shape is not free.
#: ``diagnostics`` reads no training state and draws from its own generator: the warm-up
#: rows keep the checkpoint's diagnostic columns (docs/choices.md#diagnostics).
WARMUP_FREE = ("variant", "warmup_epochs", "lr_decay_epoch", "lambda_p", "k", "p", "lambda_conf", "lambda_mse",
               "gmm_threshold", "easy_selection", "hal_iters", "hal_batch_size", "hal_lr", "hal_graph",
               "clean_hard_weight", "sharpen_t", "mixup_alpha", "rampup_epochs", "lambda_prior", "gmm_max_iter",
               "gmm_backend", "label_folds", "suggest_confidence", "diagnostics")
_HAL_SHAPE = ("hal_hidden", "hal_out_relu", "hal_skip", "hal_norm")


def check_warm_start(cfg: Config, state: dict, path) -> None:
    """Refuse a warm start from a checkpoint that is not a warm-up this run would
    have trained itself: past its own or this run's warm-up, or made with settings
    that the warm-up reads (all but :data:`WARMUP_FREE`)."""
    free = set(WARMUP_FREE) | set(RESULT_FREE) | (set(_HAL_SHAPE) if cfg.nets == 1 else set())
    saved, changed = _changed_settings(cfg, state, free)
    done = int(state["epoch"])
    warm = lambda variant, w: variant == "ce" or done <= w  # noqa: E731  (every epoch done was cross-entropy)
    if not (warm(saved["variant"], saved["warmup_epochs"]) and warm(cfg.variant, cfg.warmup_epochs)):
        raise CheckpointError(f"cannot warm-start from {str(path)!r}: its {done} epochs are not all warm-up epochs "
                              f"of this run (warmup_epochs={cfg.warmup_epochs}); take the checkpoint of epoch "
                              f"<= {cfg.warmup_epochs} (checkpoint_every) or train from scratch")
    if done > cfg.epochs:
        raise CheckpointError(f"cannot warm-start from {str(path)!r}: it has run {done} epochs, more than "
                              f"epochs={cfg.epochs}")
    diff = [f"{k} (within the warm-up)" if k == "lr_decay_epoch" else k for k in changed]
    penalty = lambda variant, c: 0.0 if variant == "ce" else c.get("warmup_entropy_penalty", 0.0)  # noqa: E731
    if penalty(saved["variant"], saved) != penalty(cfg.variant, cfg.to_dict()):
        diff.append("warmup_entropy_penalty (ce trains without it)")
    if diff:
        raise CheckpointError(f"cannot warm-start from {str(path)!r}: its warm-up was made with other settings that "
                              f"the warm-up reads ({', '.join(diff[:8])}); use the same settings or train from scratch")


def _warm_state(run: Run, state: dict) -> dict:
    """``state`` (a warm-up checkpoint) as this run's own state at that epoch: the
    rows' phase named for this variant and, with one network, the run's own fresh
    h_phi and its optimiser (untouched by a warm-up)."""
    phase = "ce" if run.cfg.variant == "ce" else "warmup"
    state = {**state, "history": [{**r, "phase": phase} for r in state["history"]]}
    if run.cfg.nets == 1:
        state.update(hal=copy.deepcopy(run.hal.state_dict()), hal_opt=copy.deepcopy(run.hal_opt.state_dict()))
    return state


def _checkpoint_due(cfg: Config, epochs_done: int) -> bool:
    return bool(cfg.checkpoint_every and epochs_done % cfg.checkpoint_every == 0) or epochs_done == cfg.epochs


def fit(cfg: Config, out_dir=None, data: ImageData | None = None, noisy: torch.Tensor | None = None,
        resume: bool = True, progress: bool | None = None, warm_start=None) -> RunResult:
    """Train ``cfg.variant`` on ``cfg``'s data and noisy labels (Alg. 1). See the module docstring.

    ``warm_start``: a checkpoint taken within the warm-up of a run that differs
    from this one only in settings the warm-up does not read (:data:`WARMUP_FREE`:
    e.g. another variant of Table 5, or other SSL settings); a run that has no
    checkpoint of its own starts from it instead of epoch 0, and ends as the
    same run trained from scratch would (the variants of a grid share one warm-up).
    """
    cfg.validate()
    distributed.setup()  # under torchrun: one run over the ranks (hallnll.distributed); rank 0 writes out_dir
    # one run per folder at a time: rank 0 holds the folder's lock for all the ranks
    held = folder_lock(out_dir) if out_dir is not None and distributed.is_main() else contextlib.nullcontext()
    with held, cpu_threads(cfg.threads):
        return _fit(cfg, out_dir, data, noisy, resume, cfg.progress if progress is None else progress, warm_start)


def _say(msg: str) -> None:
    if distributed.is_main():  # DDP: one line, not one per rank
        print(msg, file=sys.stderr, flush=True)


def _fit(cfg: Config, out_dir, data, noisy, resume: bool, progress: bool, warm_start=None) -> RunResult:
    t_start = time.perf_counter()
    dev = engine.resolve_device(cfg.device)
    out = Path(out_dir) if out_dir is not None else None
    ckpt = out / "checkpoint.pt" if out is not None else None
    state = None
    if resume and ckpt is not None and ckpt.is_file():
        # checked before the noise is rebuilt (minutes for classification-based noise)
        state = read_checkpoint(ckpt)
        check_resumable(cfg, state, ckpt)
    warm = None
    if state is None and warm_start is not None:
        if not Path(warm_start).is_file():
            raise CheckpointError(f"warm start {str(warm_start)!r}: no such checkpoint file (a run folder's "
                                  f"checkpoint.pt, saved within its warm-up)")
        warm = read_checkpoint(warm_start)
        check_warm_start(cfg, warm, warm_start)
    done_before = (state is not None and int(state["epoch"]) >= cfg.epochs
                   and all((out / n).is_file() for n in RUN_OUTPUTS if n != "noisy_labels.csv"))
    if done_before and noisy is None and cfg.noise in GENERATED_NOISE and cfg.dataset != "folder":
        noisy = state["noisy"]  # made from the settings just checked: not made again (minutes for C-based noise)
    data, noisy, noise_report = prepare(cfg, data, noisy, progress)
    run = Run(cfg, data, noisy, dev)
    wall_before = 0.0
    if state is not None:
        run.load_state_dict(state, str(ckpt))  # refuses a state made with other labels
        wall_before = float(state.get("wall_seconds", 0.0))
        if run.epochs_done < cfg.epochs:
            _say(f"resuming {out} from epoch {run.epochs_done} of {cfg.epochs}")
        elif done_before:
            _say(f"{out}: finished already ({run.epochs_done} of {cfg.epochs} epochs), nothing to run; its results "
                 f"are in {out}/summary.json and labels.csv (--no-resume to run it again)")
            summary = json.loads((out / "summary.json").read_text())
            return RunResult(summary, run.history, out, run.model, run.label_report(), run.last_anchors, run, True)
    elif warm is not None:
        run.load_state_dict(_warm_state(run, warm), str(warm_start))
        wall_before = float(warm.get("wall_seconds", 0.0))
        _say(f"warm start: {out or cfg.name} from epoch {run.epochs_done} of {warm_start}")
    resumed_from = run.epochs_done
    if not distributed.is_main():  # DDP: every rank read the checkpoint above; rank 0 alone writes
        out = ckpt = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            reporting.remove_outputs(out, RUN_OUTPUTS)  # the old run goes just before the new one is written
        cfg.save(out / "config.yaml")
        (out / "noise_report.txt").write_text(labels_text(cfg, data, noise_report))
        if data.train_labels_known:
            # the exact labels trained on: regenerated noise depends on float
            # reduction order (threads, GPU kernels), so keep what was used;
            # --set noise=file --set noise_file=.../noisy_labels.csv reuses it
            save_label_csv(out / "noisy_labels.csv", data.y_train, noisy)

    def wall() -> float:  # the whole run: earlier sessions (to their last checkpoint) and this one
        return wall_before + time.perf_counter() - t_start

    bar = None
    if progress and distributed.is_main():
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs, initial=run.epochs_done, desc=f"{cfg.name} [{cfg.variant}]", unit="epoch")
    while run.epochs_done < cfg.epochs:
        try:
            row = run.epoch()
        except TrainingError as e:
            if ckpt is None:
                raise
            raise TrainingError(f"{e} The last good checkpoint is {ckpt}.") from None
        if ckpt is not None and _checkpoint_due(cfg, run.epochs_done):
            reporting.save_checkpoint({**run.state_dict(), "wall_seconds": wall()}, ckpt)
            reporting.write_metrics(out / "metrics.jsonl", run.history)
        if bar is not None:
            acc = "-" if row["test_acc"] is None else f"{row['test_acc']:.4f}"
            bar.set_postfix(acc=acc, loss=f"{row['train_loss']:.3f}", phase=row["phase"])
            bar.update(1)
    if bar is not None:
        bar.close()

    labels = run.label_report()
    session = time.perf_counter() - t_start
    summary = reporting.summarize(run.history, wall_before + session, cfg)
    summary.update(wall_seconds_this_session=session, resumed_from_epoch=resumed_from,
                   device=str(dev), torch_threads=torch.get_num_threads(), n_train=len(noisy), n_test=len(data.y_test),
                   world_size=distributed.world())
    if warm is not None:
        summary["warm_start"] = {"checkpoint": str(warm_start), "epoch": int(warm["epoch"])}
    if data.train_labels_known:
        summary["noise_rate_actual"] = noise_report.actual_rate
    if out is not None:
        reporting.write_metrics(out / "metrics.jsonl", run.history)
        reporting.write_labels_csv(out / "labels.csv", labels["given"], labels["corrected"], labels["easiness"],
                                   labels["subset"], labels["predicted"], data.y_train if data.train_labels_known else None,
                                   data.train_paths)
        reporting.atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    distributed.barrier()  # DDP: every rank returns once rank 0 has written the outputs
    return RunResult(summary, run.history, out, run.model, labels, run.last_anchors, run)
