"""One training run of Alg. 1, its epoch as the paper's steps.

A :class:`Run` holds everything a run keeps on the device (images, model
f_theta/g_rho, hallucinator h_phi, optimisers, random generators) and its
progress (epochs done, metrics history, the last selection). Each step of
Alg. 1 is one public method, timed under its own name by :attr:`Run.timer`:

==================  ================================  ==============================
method              Alg. 1 / paper                    returns
==================  ================================  ==============================
``warmup_epoch``    lines 2-3, cross-entropy          mean loss (device tensor)
``easiness``        line 6, §3.1: predict pass,       :class:`Easiness` (logits,
                    per-sample loss, GMM -> omega     features, losses, GMM, omega)
``select_easy``     line 7, Eq. 1 (or DivideMix's     :class:`Selection` with the
                    threshold for ``gmm``)            easy subset labeled
``hallucinate``     lines 8-15, Eq. 2                 S_hal (HallucinationResult)
``select_hard``     lines 17-19, §3.3                 :class:`Selection` with the
                                                      clean-hard subset added
``ssl_epoch``       lines 20-23, Eq. 3 (MixMatch)     losses (device tensors)
``recalibrate_bn``  after every training epoch:       -
                    BatchNorm statistics re-estimated
                    on un-mixed training images
``evaluate``        test accuracy                     device tensor
==================  ================================  ==============================

:meth:`Run.select` (lines 5-19) and :meth:`Run.epoch` compose them for the
current epoch and ``cfg.variant`` (``ce``: cross-entropy throughout;
``gmm``/``easy``: no hallucination, no hard samples; ``hallnll``: the full
method); :meth:`Run.epoch` assembles the epoch's metrics row from the parts
:mod:`hallnll.reporting` builds. The speed levers (:mod:`hallnll.levers`)
wrap these steps without changing them. :meth:`Run.state_dict` /
:meth:`Run.load_state_dict` hold all that is needed to continue a run bit for bit; :func:`hallnll.train.fit` is a loop
over :meth:`Run.epoch` with checkpoints and outputs, and ``hallnll bench``,
the figures and the notebooks call the same steps.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import cotrain, distributed, engine, levers, reporting, selection, ssl
from .config import Config
from .data import ImageData
from .data.stream import DecodePool, balanced_draw, device_images
from .hallucination import HallucinationResult, Hallucinator, hallucinate
from .models import build_model


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a NaN loss); the message names epoch and phase."""


class CheckpointError(ValueError):
    """``checkpoint.pt`` cannot be resumed (unreadable, or made with other settings or labels)."""


class OtherLabelsError(CheckpointError, TrainingError):
    """A saved state made with other noisy labels than the run's (both a checkpoint and a training error)."""


class Timer:
    """Seconds spent per named phase; on CUDA the device is synchronised at the
    start and end of each phase (only there), so a phase's time is its own.

        timer = Timer(device)
        with timer.phase("ssl"):
            ...
        timer.seconds  # {"ssl": 1.23}
    """

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else None
        self.seconds: dict = {}

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str):
        self._sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def reset(self) -> None:
        self.seconds = {}


@dataclass
class Easiness:
    """Alg. 1 line 6 on the current model: one un-augmented pass over the training set."""

    logits: torch.Tensor  # [N, C]
    feats: torch.Tensor  # [N, d] f_theta(x_n), the feature space of S_e, S_h and S_hal
    losses: torch.Tensor  # [N] cross-entropy against the given labels
    gmm: selection.LossGMM  # the fitted GMM (densities for plots)
    omega: torch.Tensor  # [N] easiness, on the device


@dataclass
class Selection:
    """The labeled set of an epoch over the training set (Alg. 1 lines 7, 17-19).

    ``train_labels`` are the given labels, corrected on the clean-hard samples;
    ``weights`` the label-refinement weight w of Eq. 3's targets (omega for easy
    samples, ``clean_hard_weight`` or the voters' similarity for clean-hard
    ones). ``hard`` is the §3.3 result over S_h (positions in ``hard_index``).
    """

    omega: torch.Tensor
    easy_mask: torch.Tensor
    clean_hard_mask: torch.Tensor
    train_labels: torch.Tensor
    weights: torch.Tensor
    hard: Optional[selection.HardSelection] = None

    @property
    def labeled_mask(self) -> torch.Tensor:
        return self.easy_mask | self.clean_hard_mask

    @property
    def hard_index(self) -> torch.Tensor:
        return (~self.easy_mask).nonzero().squeeze(1)

    def state(self) -> dict:
        """What the label report needs of it, on the CPU."""
        return {"omega": self.omega.cpu(), "easy_mask": self.easy_mask.cpu(),
                "clean_hard_mask": self.clean_hard_mask.cpu(), "train_labels": self.train_labels.cpu()}


def anchor_set(hal: HallucinationResult, sel: Selection) -> dict:
    """S_hal as a dict: ``anchors``, ``labels``, ``parents`` (positions in the easy
    set) and ``easy_index`` (training indices of the easy set)."""
    return {"anchors": hal.anchors, "labels": hal.labels, "parents": hal.parents,
            "easy_index": sel.easy_mask.nonzero().squeeze(1)}


class Run:
    """The state of one training run of ``cfg`` on ``data`` with the noisy labels ``noisy``.

    Built seeded from ``cfg.seed`` (model and hallucinator initialised under
    ``torch.random.fork_rng``, so the caller's global RNG is left alone; a
    device generator for batches and augmentation; a numpy generator for
    mixup). ``noisy`` must already be checked (see :func:`hallnll.train.prepare`).
    """

    def __init__(self, cfg: Config, data: ImageData, noisy: torch.Tensor, device=None):
        cfg.validate()
        dev = engine.resolve_device(cfg.device) if device is None else torch.device(device)
        self.cfg, self.device, self.num_classes = cfg, dev, data.num_classes
        self.bf16 = levers.use_bf16(cfg, dev)  # bf16 autocast (a lever: CUDA, or the CPU with cpu_bf16)
        cl = levers.use_channels_last(cfg, dev, self.bf16)
        # cfg.nets networks f_theta/g_rho, each with its hallucinator h_phi and their SGD optimisers
        # (hallnll.cotrain; the attributes below are network 1's, cotrain.acting(run, k) makes network k the run's)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            built = []  # each network, then its h_phi (one network: the draws as always)
            for _ in range(cfg.nets):
                m = build_model(cfg.arch, data.num_classes, data.in_channels, cfg.pretrained, cfg.width).to(dev)
                built.append((m, Hallucinator(m.feature_dim, cfg.hal_hidden, cfg.hal_out_relu, cfg.hal_skip,
                                              cfg.hal_norm, cfg.lambda_p).to(dev)))
        self.nets = []
        for m, h in built:
            m = levers.memory_format(m, cl)
            # h_phi's optimiser: SGD with the model's momentum and weight decay, lr hal_lr or lr
            self.nets.append(cotrain.Net(
                m, m, h, engine.make_optimizer(m.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, cfg.sgd_impl),
                engine.make_optimizer(h.parameters(), cfg.hal_lr or cfg.lr, cfg.momentum, cfg.weight_decay,
                                      cfg.sgd_impl)))
        net = self.nets[0]
        self.model, self.train_model, self.hal, self.opt, self.hal_opt = \
            net.model, net.train_model, net.hal, net.opt, net.hal_opt
        # what is evaluated: the model, or the sum of both networks' logits (DivideMix's test())
        self.eval_model = self.model if len(self.nets) == 1 else cotrain.Ensemble([n.model for n in self.nets])
        # resident uint8 on the device, or streamed from disk per batch (ImagePaths: hallnll.data.stream),
        # every split decoded by one pool of cfg.loader_workers workers
        pool = DecodePool(cfg.loader_workers, pin_memory=dev.type == "cuda") if data.streamed else None
        self.train_x = device_images(data.x_train, data.mean, data.std, dev, cl, cfg, cfg.seed, pool)
        self.test_x = device_images(data.x_test, data.mean, data.std, dev, cl, cfg, cfg.seed + 1, pool)
        self.given = noisy.to(dev)
        self.true = data.y_train.to(dev) if data.train_labels_known else None
        self.y_test = data.y_test.to(dev)
        # the validation split that chooses the reported epoch (App. A, Clothing1M's 14k clean images)
        self.val_x = None if data.x_val is None else device_images(data.x_val, data.mean, data.std, dev, cl, cfg,
                                                                   cfg.seed + 2, pool)
        self.y_val = None if data.y_val is None else data.y_val.to(dev)
        self.draw: Optional[torch.Tensor] = None  # the training indices of this epoch's draw (Config.epoch_batches)
        # the step losses: None runs the eager engine.ce_loss / ssl.mixmatch_loss (compile_step replaces them)
        self.ce_loss = self.mixmatch_loss = None
        self.mixmatch = ssl.MixMatchSettings.of(cfg)  # what ssl.ssl_epoch reads of cfg
        self.hal_step: Optional[levers.StaticHalStep] = None  # hal_graph: built at the first hallucination phase
        levers.compile_run(self, data.streamed)  # compile / compile_step (hallnll.levers)
        # DDP under torchrun (hallnll.distributed): gradients averaged over the ranks, each on its part of a batch
        self.part = distributed.batch_part()
        if self.part is not None:  # each network its own DDP (nets=2: both co-trained networks data-parallel)
            for n in self.nets:
                n.train_model = distributed.wrap(n.model)
            self.train_model = self.nets[0].train_model
        self.gen = torch.Generator(dev).manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.timer = Timer(dev)
        self.epochs_done = 0  # the 0-based index of the next epoch
        self.history: list = []  # one metrics row per epoch done
        self.last: dict = {}  # Selection.state() of the last SSL epoch (the label report's source)
        self.last_anchors: Optional[dict] = None  # S_hal of the last epoch run in this process (anchor_set)

    # ------------------------------------------------------------ the steps of Alg. 1
    def warmup_epoch(self) -> torch.Tensor:
        """Alg. 1 lines 2-3: one cross-entropy epoch on the given labels; the mean loss.

        The SSL variants add ``cfg.warmup_entropy_penalty`` times DivideMix's
        negative-entropy penalty (:func:`hallnll.engine.neg_entropy`); variant
        ``ce``, the cross-entropy baseline, trains on plain cross-entropy."""
        cfg = self.cfg
        penalty = 0.0 if cfg.variant == "ce" else cfg.warmup_entropy_penalty
        with self.timer.phase("warmup"):
            return engine.ce_epoch(self.train_model, self.train_x, self.given, self.opt,
                                   cfg.warmup_batch_size or cfg.batch_size, self.gen,
                                   cfg.crop_padding, cfg.hflip, self.bf16, loss_fn=self.ce_loss,
                                   entropy_penalty=penalty, part=self.part)

    def easiness(self) -> Easiness:
        """Alg. 1 line 6 (§3.1): logits and features of the training images, the
        per-sample losses against the given labels, their GMM and omega."""
        cfg = self.cfg
        with self.timer.phase("easiness"):
            # all N images (under DDP each rank scores its shard, then they are gathered)
            logits, feats = distributed.predict_all(self.model, self.train_x, cfg.eval_batch_size, self.bf16)
            losses = selection.per_sample_loss(logits, self.given)
            gmm = selection.fit_loss_gmm(losses, cfg.gmm_max_iter, cfg.seed, cfg.gmm_backend)
            return Easiness(logits, feats, losses, gmm, gmm.omega(losses.device))

    def select_easy(self, omega: torch.Tensor) -> Selection:
        """Alg. 1 line 7: the easy subset S_e, class-balanced by Eq. 1 (DivideMix's
        ``omega > gmm_threshold`` for variant ``gmm`` or ``easy_selection=gmm``)."""
        cfg = self.cfg
        with self.timer.phase("select_easy"):
            if cfg.variant in ("gmm", "dividemix") or cfg.easy_selection == "gmm":
                easy = selection.select_gmm(omega, cfg.gmm_threshold)
            else:
                easy = selection.select_easy(omega, self.given, self.num_classes, cfg.p)
            return Selection(omega, easy, torch.zeros_like(easy), self.given.clone(), omega.clone())

    def hallucinate(self, feats: torch.Tensor, sel: Selection) -> HallucinationResult:
        """Alg. 1 lines 8-15 (Eq. 2): I_max updates of h_phi on the easy features
        (f_theta, g_rho frozen); every anchor made is kept in S_hal."""
        cfg = self.cfg
        with self.timer.phase("hallucinate"):
            easy_idx = sel.easy_mask.nonzero().squeeze(1)
            batch = cfg.hal_batch_size or cfg.batch_size
            iters = cfg.hal_iters or engine.num_iters(len(self.given), batch)
            if cfg.hal_graph and self.hal_step is None:
                self.hal_step = levers.StaticHalStep(self.hal, self.hal_opt, self.model.classifier, batch, cfg.lambda_p,
                                              self.device)
            return hallucinate(self.hal, self.hal_opt, self.model.classifier, feats[easy_idx], self.given[easy_idx],
                               self.num_classes, iters, batch, cfg.lambda_p, self.gen, static_step=self.hal_step)

    def select_hard(self, feats: torch.Tensor, sel: Selection, hal: HallucinationResult,
                    lambda_conf: float | None = None) -> Selection:
        """Alg. 1 lines 17-19 (§3.3): the clean-hard samples of S_h, relabelled by
        the K-vote of their valid anchors, join the labeled set.

        ``lambda_conf`` overrides ``cfg.lambda_conf`` (for sweeps); ``sel`` is
        left as it was.
        """
        cfg = self.cfg
        with self.timer.phase("select_hard"):
            hard_idx = sel.hard_index
            clean_hard, labels, weights = sel.clean_hard_mask.clone(), sel.train_labels.clone(), sel.weights.clone()
            hs = None
            if len(hard_idx):
                hs = selection.select_hard(hal.anchors, hal.labels, feats[hard_idx], self.num_classes,
                                           cfg.lambda_conf if lambda_conf is None else lambda_conf, cfg.k)
                ch = hard_idx[hs.clean]
                clean_hard[ch] = True
                labels[ch] = hs.corrected[hs.clean]
                conf = hs.confidence[hs.clean]
                weights[ch] = conf if cfg.clean_hard_weight < 0 else torch.full_like(conf, cfg.clean_hard_weight)
            return Selection(sel.omega, sel.easy_mask, clean_hard, labels, weights, hs)

    def ssl_epoch(self, sel: Selection, peer: Optional[torch.nn.Module] = None) -> dict:
        """Alg. 1 lines 20-23 (Eq. 3): one MixMatch pass over the labeled set of ``sel``,
        the rest unlabeled; with ``peer`` (the other network, :mod:`hallnll.cotrain`)
        the unlabeled targets are co-guessed. Returns the mean losses (device tensors)."""
        cfg = self.cfg
        with self.timer.phase("ssl"):
            labeled = sel.labeled_mask
            lab_idx = labeled.nonzero().squeeze(1)
            unl_idx = (~labeled).nonzero().squeeze(1)
            iters = engine.num_iters(len(lab_idx), cfg.batch_size)
            return ssl.ssl_epoch(self.train_model, self.opt, self.train_x, lab_idx, sel.train_labels[lab_idx],
                                 sel.weights[lab_idx], unl_idx, self.num_classes, self.mixmatch, self.epochs_done, self.gen,
                                 self.rng, iters, loss_fn=self.mixmatch_loss, bf16=self.bf16, part=self.part,
                                 peer=peer)

    def recalibrate_bn(self) -> None:
        """After a training epoch: re-estimate the BatchNorm statistics on
        ``cfg.bn_recal_images`` augmented, un-mixed training images under the
        final weights of the epoch (why: docs/choices.md#bn-recal).

        Draws from a generator of its own, seeded by (seed, epoch), so the
        training stream of batches and augmentations is the same with or
        without it."""
        cfg = self.cfg
        if cfg.bn_recal_images:
            with self.timer.phase("bn_recal"):
                gen = torch.Generator(self.device).manual_seed(cfg.seed * 100_003 + self.epochs_done)
                engine.recalibrate_bn(self.model, self.train_x, cfg.bn_recal_images, cfg.batch_size, gen,
                                      cfg.crop_padding, cfg.hflip, self.bf16)
        distributed.sync_buffers(self.model)  # DDP: rank 0's statistics on every rank

    def evaluate(self, split: str = "test") -> torch.Tensor:
        """Top-1 accuracy on the test (or ``val``idation) set (a device tensor)."""
        images, labels = (self.val_x, self.y_val) if split == "val" else (self.test_x, self.y_test)
        with self.timer.phase("eval"):
            return engine.accuracy(self.eval_model, images, labels, self.cfg.eval_batch_size, self.bf16)

    # ------------------------------------------------------------ the epoch's draw
    @contextlib.contextmanager
    def drawn(self, part: int = 0):
        """The epoch's training set: with ``cfg.epoch_batches``, DivideMix's
        Clothing1M draw (:func:`hallnll.data.stream.balanced_draw`: ``epoch_batches
        x batch_size`` images class-balanced by the given labels, twice as many in
        a warm-up epoch) stands in for the training set while the block runs, so
        every step of the epoch (warm-up, easiness pass and GMM, selection, SSL,
        BatchNorm re-estimation) works on it; the whole set is put back after.
        The draw is seeded by (seed, epoch), and so are a streamed draw's crops and flips
        (``part`` 0 training, 1 BatchNorm re-estimation): a resumed run draws the same."""
        cfg = self.cfg
        if not cfg.epoch_batches:
            yield
            return
        n = cfg.epoch_batches * cfg.batch_size * (2 if self.in_warmup else 1)
        rng = np.random.default_rng([cfg.seed, self.epochs_done])
        idx = torch.from_numpy(balanced_draw(self.given.cpu().numpy(), n, self.num_classes, rng))
        full = self.train_x, self.given, self.true
        self.draw = idx
        di = idx.to(self.device)
        self.train_x, self.given = full[0].subset(idx, seed=(cfg.seed * 100_003 + self.epochs_done) * 2 + part), \
            full[1][di]
        self.true = None if full[2] is None else full[2][di]
        try:
            yield
        finally:
            self.train_x, self.given, self.true = full

    # ------------------------------------------------------------ diagnostics
    def selection_diagnostics(self, ez: Easiness, sel: Selection, hal: Optional[HallucinationResult]) -> dict:
        """What the labeled/unlabeled split and S_hal look like (metrics.jsonl keys,
        :func:`hallnll.reporting.selection_diagnostics`)."""
        with self.timer.phase("diagnostics"):
            return reporting.selection_diagnostics(ez.logits, ez.feats, sel, hal, self.true, self.given,
                                                   self.model.classifier, self.cfg.lambda_conf, self.cfg.lambda_p,
                                                   self.cfg.seed)

    def bn_diagnostics(self) -> dict:
        """Test accuracy with BatchNorm's batch statistics (``test_acc_batch_bn``):
        far above ``test_acc`` means the running averages misdescribe the weights."""
        with self.timer.phase("diagnostics"):
            acc = engine.accuracy_batch_stats(self.eval_model, self.test_x, self.y_test, self.cfg.eval_batch_size,
                                              self.bf16)
        return {"test_acc_batch_bn": float(acc)}

    def running_bn_diagnostics(self) -> dict:
        """Test accuracy with the running averages, before their re-estimation (``test_acc_running_bn``)."""
        with self.timer.phase("diagnostics"):
            return {"test_acc_running_bn": float(engine.accuracy(self.eval_model, self.test_x, self.y_test,
                                                                 self.cfg.eval_batch_size, self.bf16))}

    # ------------------------------------------------------------ one epoch
    def select(self) -> tuple:
        """Alg. 1 lines 5-19 for ``cfg.variant``: the labeled set of the next SSL epoch.

        Returns ``(Easiness, Selection, S_hal)``; S_hal (and the clean-hard
        subset) only for ``hallnll``, else None.
        """
        ez = self.easiness()
        sel = self.select_easy(ez.omega)
        hal = None
        if self.cfg.variant == "hallnll":
            hal = self.hallucinate(ez.feats, sel)
            sel = self.select_hard(ez.feats, sel, hal)
        return ez, sel, hal

    @property
    def in_warmup(self) -> bool:
        """Whether the next epoch is a cross-entropy one (warm-up, or variant ``ce``)."""
        return self.cfg.variant == "ce" or self.epochs_done < self.cfg.warmup_epochs

    def epoch(self) -> dict:
        """Run the next epoch of Alg. 1 for ``cfg.variant``; append its metrics row
        to :attr:`history` and return it. Raises :class:`TrainingError` on a
        non-finite loss (the run's state is then not to be saved). Runs in
        cuDNN benchmark mode where ``cfg.cudnn_benchmark`` (CUDA)."""
        with levers.cudnn_benchmark(self.cfg.cudnn_benchmark, self.device):
            return self._epoch()

    def _epoch(self) -> dict:
        t = self.epochs_done
        self.timer.reset()
        row: dict = {"epoch": t + 1, "lr": self.set_lr()}  # the metrics row (its parts: hallnll.reporting)
        with self.drawn():
            row.update(self._train_epoch())  # Alg. 1 lines 2-3 (warm-up), or 5-23 (selection, SSL)
        row.update(self._after_training())  # BatchNorm re-estimated, then the accuracies
        row["seconds"] = reporting.phase_seconds(self.timer.seconds)
        self.history.append(row)
        self.epochs_done = t + 1
        return row

    def _after_training(self) -> dict:
        """After the epoch's training: BatchNorm re-estimated (every network, on the epoch's
        draw), validation and test accuracy, and the BatchNorm diagnostics around them."""
        cfg, row = self.cfg, {}
        if cfg.epoch_batches:
            row["n_drawn"] = len(self.draw)
        has_test = len(self.y_test) > 0  # no test set: a user's folder without a test CSV
        if cfg.diagnostics and cfg.bn_recal_images and has_test:
            row.update(self.running_bn_diagnostics())
        with self.drawn(1):  # re-estimated on the epoch's draw (the same images: seeded by the epoch)
            for k in range(len(self.nets)):
                with cotrain.acting(self, k):
                    self.recalibrate_bn()
        if self.y_val is not None:
            row["val_acc"] = float(self.evaluate("val"))
        row["test_acc"] = float(self.evaluate()) if has_test else None
        if cfg.diagnostics and has_test:
            row.update(self.bn_diagnostics())
        return row

    def set_lr(self) -> float:
        """The paper's step schedule at this epoch, for every network and its h_phi; the model's rate."""
        cfg, t = self.cfg, self.epochs_done
        lr = engine.step_lr(cfg.lr, t, cfg.lr_decay_epoch)
        for net in self.nets:
            engine.set_lr(net.opt, lr)
            engine.set_lr(net.hal_opt, engine.step_lr(cfg.hal_lr or cfg.lr, t, cfg.lr_decay_epoch))
        return lr

    def _train_epoch(self) -> dict:
        """The training part of the epoch on :meth:`drawn`'s set: a warm-up epoch, or the
        selection and the SSL epoch; their part of the metrics row."""
        cfg = self.cfg
        if len(self.nets) > 1:
            return cotrain.train_epoch(self)
        if self.in_warmup:
            row = {"phase": "ce" if cfg.variant == "ce" else "warmup", "train_loss": float(self.warmup_epoch())}
            self._check_finite(row["train_loss"], row["phase"])
            return row
        ez, sel, hal = self.select()  # lines 5-19
        losses = self.ssl_epoch(sel)  # lines 20-23
        row = {"phase": "ssl", **reporting.ssl_row(losses, hal, sel, self.true, self.given)}
        if hal is not None:
            self._check_finite(row["hal_loss"], "hallucination")
        self._check_finite(row["train_loss"], "ssl")
        if cfg.diagnostics:
            row.update(self.selection_diagnostics(ez, sel, hal))
        self.keep(sel, hal)
        return row

    def keep(self, sel: Selection, hal: Optional[HallucinationResult]) -> None:
        """The last selection (the label report covers the whole training set: a drawn
        epoch's selection does not) and S_hal of the last epoch."""
        self.last = sel.state() if not self.cfg.epoch_batches else {}
        self.last_anchors = anchor_set(hal, sel) if hal is not None else None

    def _check_finite(self, value: float, phase: str) -> None:
        if not math.isfinite(value):
            raise TrainingError(f"loss is {value} at epoch {self.epochs_done + 1} in phase {phase!r}: stopping. "
                                f"Try a lower lr or bf16=false.")

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue this run exactly: model, optimisers,
        hallucinator, generator states, history, epochs done, the last selection
        (and the noisy labels and config it belongs to)."""
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "hal": self.hal.state_dict(),
                "hal_opt": self.hal_opt.state_dict(), "gen": self.gen.get_state(), "rng": self.rng.bit_generator.state,
                "history": self.history, "epoch": self.epochs_done, "noisy": self.given.cpu(), "last": self.last,
                "config": self.cfg.to_dict(),
                # Config.nets = 2: the second network, its hallucinator and their optimisers
                "peers": [{"model": n.model.state_dict(), "opt": n.opt.state_dict(), "hal": n.hal.state_dict(),
                           "hal_opt": n.hal_opt.state_dict()} for n in self.nets[1:]]}

    def load_state_dict(self, state: dict, source: str = "the checkpoint") -> None:
        """Continue from :meth:`state_dict`; refuses a state made with other noisy labels."""
        if not torch.equal(state["noisy"].cpu(), self.given.cpu()):
            raise OtherLabelsError(f"{source} was made with other labels than these (other noisy labels: the data "
                                   f"or its CSV changed); use another --out, or --no-resume (resume=False) to start "
                                   f"over in this folder")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.hal.load_state_dict(state["hal"])
        self.hal_opt.load_state_dict(state["hal_opt"])
        self.hal_step = self.nets[0].hal_step = None  # its CUDA graph holds the replaced momentum buffers
        for net, st in zip(self.nets[1:], state.get("peers", [])):
            for key in ("model", "opt", "hal", "hal_opt"):
                getattr(net, key).load_state_dict(st[key])
            net.hal_step = None
        self.gen.set_state(state["gen"].cpu())
        self.rng.bit_generator.state = state["rng"]
        # the last selection stays on the CPU, where Selection.state() made it (a checkpoint read with
        # map_location=cuda put it on the GPU, and the label report then mixed devices)
        self.last = {k: v.cpu() for k, v in state.get("last", {}).items()}
        self.history, self.epochs_done = state["history"], state["epoch"]

    def save(self, path) -> None:
        """Write :meth:`state_dict` to ``path`` atomically, with its checksum."""
        reporting.save_checkpoint(self.state_dict(), path)

    def load(self, path) -> None:
        """Continue from a file written by :meth:`save`.

        Read onto the CPU: the model's and optimisers' ``load_state_dict`` copy
        their tensors onto the run's device, everything else belongs on the CPU."""
        self.load_state_dict(reporting.load_checkpoint(path), str(path))

    # ------------------------------------------------------------ the outcome
    @torch.no_grad()
    def label_report(self) -> dict:
        """Per training sample: given, corrected and predicted label, easiness and
        subset code (0 easy, 1 clean-hard, 2 unlabeled), as CPU tensors.

        From the last SSL epoch's selection; when there was none (variant ``ce``,
        or a run still in warm-up) one easiness pass is made with the GMM
        threshold as the clean/noisy split.
        """
        cfg = self.cfg
        if self.last:
            logits, _ = engine.predict(self.model, self.train_x, cfg.eval_batch_size, self.bf16, features=False)
            # on the CPU: Selection.state() made it there and load_state_dict keeps it there
            omega, easy, ch, train_labels = (self.last[k] for k in ("omega", "easy_mask", "clean_hard_mask",
                                                                   "train_labels"))
            labeled = easy | ch
        else:  # the easiness pass without the features ([N, d]: 8 GB for Clothing1M's 1M images at d = 2048)
            logits, _ = engine.predict(self.model, self.train_x, cfg.eval_batch_size, self.bf16, features=False)
            losses = selection.per_sample_loss(logits, self.given)
            omega = selection.fit_loss_gmm(losses, cfg.gmm_max_iter, cfg.seed, cfg.gmm_backend).omega(losses.device).cpu()
            easy = selection.select_gmm(omega, cfg.gmm_threshold)
            ch = torch.zeros_like(easy)
            labeled, train_labels = easy, self.given.cpu()
        predicted = logits.argmax(1).cpu()
        subset = torch.full((len(self.given),), 2, dtype=torch.int64)
        subset[easy] = 0
        subset[ch] = 1
        corrected = torch.where(labeled, train_labels, predicted)
        return {"given": self.given.cpu(), "corrected": corrected, "easiness": omega, "subset": subset,
                "predicted": predicted}
