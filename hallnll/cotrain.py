"""Two co-trained networks (``Config.nets = 2``), as DivideMix trains them.

§4.2: "both DivideMix and TSCSI employ two networks ... our framework only
trains a single network in most of our experiment settings except on
Clothing1M". With two networks an epoch of :class:`hallnll.run.Run` is
DivideMix's (Train_clothing1M.py / Train_cifar.py):

- warm-up: each network runs its cross-entropy epoch (:meth:`Run.warmup_epoch`);
- selection: each network makes its own division of the (drawn) training set
  with the Run's steps (:meth:`Run.select`: easiness GMM, and for ``hallnll``
  its hallucinator, S_hal and clean-hard set), both before either trains;
- co-divide: network 1 trains its SSL epoch on network 2's division, then
  network 2 on network 1's; the unlabeled targets are *co-guessed*, the
  average of both networks' softmax on both views (the peer in eval mode,
  as DivideMix's ``net2.eval()``), the labeled targets refined by the
  network being trained alone;
- evaluation (validation and test) on the sum of both networks' logits
  (DivideMix's ``outputs1 + outputs2``), :class:`Ensemble`.

One hallucinator h_phi per network: the paper does not say, but S_hal lives
in the feature space of one f_theta and its anchors are scored by that
network's g_rho (Eq. 2), so a hallucinator cannot be shared between two
networks whose features differ. Both networks see the same per-epoch draw
(``Config.epoch_batches``); DivideMix draws one per network, from the same
class-balanced distribution. The label report (``labels.csv``) is network 1's.

:func:`acting` makes network k the Run's ``model`` / ``opt`` / ``hal`` while
a step runs, so the steps of Alg. 1 are the same code for one and two networks.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

#: the Run attributes that belong to one network
NET_ATTRS = ("model", "train_model", "hal", "opt", "hal_opt", "hal_step")


@dataclass
class Net:
    """One network of a run: f_theta/g_rho, its hallucinator and their optimisers."""

    model: nn.Module
    train_model: nn.Module
    hal: nn.Module
    opt: torch.optim.Optimizer
    hal_opt: torch.optim.Optimizer
    hal_step: Optional[object] = None


@contextlib.contextmanager
def acting(run, k: int):
    """Network ``k`` is the Run's network while the block runs (its lazily built
    hallucinator step is kept with it); network 0 is put back after."""
    run.nets[0].hal_step = run.hal_step  # built outside the block by network 0's steps
    for a in NET_ATTRS:
        setattr(run, a, getattr(run.nets[k], a))
    try:
        yield run.nets[k]
    finally:
        run.nets[k].hal_step = run.hal_step
        for a in NET_ATTRS:
            setattr(run, a, getattr(run.nets[0], a))


class _SumHeads(nn.Module):
    def __init__(self, heads, dims):
        super().__init__()
        self.heads, self.dims = nn.ModuleList(heads), list(dims)

    def forward(self, f):
        return sum(h(part) for h, part in zip(self.heads, f.split(self.dims, dim=1)))


class Ensemble(nn.Module):
    """Both networks as one model for evaluation: ``features`` is both features side
    by side, ``classifier`` the sum of both networks' logits (DivideMix's test())."""

    def __init__(self, models):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.feature_dim = sum(m.feature_dim for m in models)
        self.classifier = _SumHeads([m.classifier for m in models], [m.feature_dim for m in models])

    def features(self, x):
        return torch.cat([m.features(x) for m in self.models], dim=1)

    def forward(self, x):
        return sum(m(x) for m in self.models)


def train_epoch(run) -> dict:
    """The training part of a two-network epoch (see the module docstring); its part of the
    metrics row as :meth:`Run._train_epoch` makes it for one network, the second network's
    figures with the suffix ``_2``."""
    from . import reporting

    cfg = run.cfg
    if run.in_warmup:
        row = {"phase": "ce" if cfg.variant == "ce" else "warmup"}
        losses = []
        for k in range(len(run.nets)):
            with acting(run, k):
                losses.append(float(run.warmup_epoch()))
            run._check_finite(losses[-1], row["phase"])
        row["train_loss"], row["train_loss_2"] = losses
        return row
    row = {"phase": "ssl"}
    picks = []
    for k in range(2):  # both divisions before either network trains (DivideMix's eval_train of both)
        with acting(run, k):
            picks.append(run.select())
    for k in range(2):  # co-divide: network k learns from the other's division, co-guessing with it
        with acting(run, k):
            out = run.ssl_epoch(picks[1 - k][1], peer=run.nets[1 - k].model)
        sfx = "" if k == 0 else "_2"
        row.update(reporting.loss_row(out, sfx))
        run._check_finite(row[f"train_loss{sfx}"], "ssl")
    for k, (ez, sel, hal) in enumerate(picks):
        sfx = "" if k == 0 else "_2"
        if hal is not None:
            row.update(reporting.hal_row(hal, sfx))
            run._check_finite(row[f"hal_loss{sfx}"], "hallucination")
        m = reporting.selection_metrics(run.true, run.given, sel.labeled_mask, sel.easy_mask, sel.clean_hard_mask,
                                        sel.train_labels)
        row.update({f"{n}{sfx}": v for n, v in m.items()})
    ez, sel, hal = picks[0]
    if cfg.diagnostics:
        row.update(run.selection_diagnostics(ez, sel, hal))
    run.keep(sel, hal)
    return row
