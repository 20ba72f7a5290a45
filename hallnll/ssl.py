"""Semi-supervised learning (§3.4, Eq. 3): MixMatch as DivideMix does it,
with one network.

Labeled = easy U clean-hard (with corrected labels); unlabeled = the rest.
Every image gets two weak augmentations. Targets (no gradient):

- labeled: refined label  p = w * y + (1 - w) * mean(softmax of both views),
  then sharpened with temperature T; w is the easiness for easy samples and
  the clean-hard weight for clean-hard ones;
- unlabeled: sharpened mean prediction of both views.

All four batches are mixed with l ~ Beta(alpha, alpha), l = max(l, 1 - l)
and one random permutation, and the loss is

    L_SSL = L_CE + lambda_MSE * L_MSE                                  (Eq. 3)

with L_CE the soft cross-entropy on the mixed labeled part and L_MSE the
mean squared error between softmax and target on the mixed unlabeled part.
As in DivideMix, lambda_MSE is ramped up linearly over ``rampup_epochs``
after warm-up and a uniform-prior penalty sum_c pi_c log(pi_c / mean_p_c)
is added (weight ``lambda_prior``; 0 switches it off).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from .data.gpu import augment_draws
from .engine import autocast, to_device


@dataclass(frozen=True)
class MixMatchSettings:
    """What one MixMatch epoch reads of the run's settings (:class:`hallnll.config.Config`'s fields
    of the same names): the batch and its augmentation, T, alpha, lambda_MSE and its ramp-up, the
    prior penalty."""

    batch_size: int
    crop_padding: int
    hflip: bool
    sharpen_t: float
    mixup_alpha: float
    lambda_mse: float
    warmup_epochs: int
    rampup_epochs: int
    lambda_prior: float

    @classmethod
    def of(cls, cfg) -> "MixMatchSettings":
        """The settings of ``cfg`` (a Config, or anything with these attributes)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


def sharpen(p: torch.Tensor, t: float) -> torch.Tensor:
    pt = p ** (1.0 / t)
    return pt / pt.sum(dim=1, keepdim=True)


def labeled_targets(p1: torch.Tensor, p2: torch.Tensor, y_onehot: torch.Tensor, w: torch.Tensor, t: float) -> torch.Tensor:
    """Label refinement: sharpen(w * y + (1 - w) * (p1 + p2) / 2)."""
    w = w.view(-1, 1)
    return sharpen(w * y_onehot + (1 - w) * (p1 + p2) / 2, t)


def unlabeled_targets(p1: torch.Tensor, p2: torch.Tensor, t: float) -> torch.Tensor:
    """Label guessing: sharpen((p1 + p2) / 2)."""
    return sharpen((p1 + p2) / 2, t)


def mix(inputs: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor):
    """Mixup of a batch with a permutation of itself."""
    return lam * inputs + (1 - lam) * inputs[perm], lam * targets + (1 - lam) * targets[perm]


def rampup(current: float, warmup: int, length: int) -> float:
    """DivideMix's linear ramp-up factor in [0, 1]."""
    if length <= 0:
        return 1.0
    return float(np.clip((current - warmup) / length, 0.0, 1.0))


def ssl_loss(logits: torch.Tensor, mixed_targets: torch.Tensor, n_labeled: int, lambda_u: float,
             lambda_prior: float, num_classes: int):
    """Eq. 3 plus the prior penalty on the logits of a mixed batch.

    The first ``n_labeled`` rows are the labeled part. Returns
    ``(loss, l_ce, l_mse)``.
    """
    logits = logits.float()
    lx, tx = logits[:n_labeled], mixed_targets[:n_labeled]
    lu, tu = logits[n_labeled:], mixed_targets[n_labeled:]
    l_ce = -(F.log_softmax(lx, dim=1) * tx).sum(dim=1).mean()
    l_mse = ((torch.softmax(lu, dim=1) - tu) ** 2).mean() if len(lu) else logits.new_zeros(())
    loss = l_ce + lambda_u * l_mse
    if lambda_prior > 0:
        prior = torch.full((num_classes,), 1.0 / num_classes, device=logits.device)
        pred_mean = torch.softmax(logits, dim=1).mean(0)
        loss = loss + lambda_prior * (prior * torch.log(prior / pred_mean)).sum()
    return loss, l_ce, l_mse


def mixmatch_loss(model, images, il: torch.Tensor, iu, draws: list, y_l: torch.Tensor, w_l: torch.Tensor, lam,
                  perm: torch.Tensor, lambda_u, num_classes: int, sharpen_t: float, lambda_prior: float,
                  padding: int = 4, bf16: bool = False, peer=None):
    """One MixMatch step's loss (Eq. 3) from its batch and its random numbers.

    ``il``/``iu`` index the labeled/unlabeled images (``iu`` None: no
    unlabeled part); ``draws`` are the augmentation draws of the views
    (labeled 1, 2, unlabeled 1, 2); ``y_l``/``w_l`` the labels and refinement
    weights of ``il``; ``lam`` the mixup coefficient and ``perm`` its
    permutation; ``lambda_u`` the weight of L_MSE. ``peer`` (two co-trained
    networks, :mod:`hallnll.cotrain`; in eval mode) co-guesses the unlabeled
    targets: sharpen of the mean of both networks' softmax on both views,
    DivideMix's label co-guessing. A pure function of its
    arguments (no generator inside), so it can be compiled. Returns
    ``(loss, l_ce, l_mse)``.
    """
    dev = images.device
    parts = [images.augmented(il, draws[0], padding), images.augmented(il, draws[1], padding)]
    if iu is not None:
        parts += [images.augmented(iu, draws[2], padding), images.augmented(iu, draws[3], padding)]
    b_l = len(il)
    eye = torch.eye(num_classes, device=dev)
    with torch.no_grad():
        with autocast(dev, bf16):
            probs = torch.softmax(model(torch.cat(parts)).float(), dim=1)
        tx = labeled_targets(probs[:b_l], probs[b_l:2 * b_l], eye[y_l], w_l, sharpen_t)
        targets = [tx, tx]
        if iu is not None:
            b_u = len(iu)
            pu1, pu2 = probs[2 * b_l:2 * b_l + b_u], probs[2 * b_l + b_u:]
            if peer is not None:
                with autocast(dev, bf16):
                    q = torch.softmax(peer(torch.cat(parts[2:])).float(), dim=1)
                pu1, pu2 = (pu1 + q[:b_u]) / 2, (pu2 + q[b_u:]) / 2  # (p11 + p12 + p21 + p22) / 4 after the mean
            tu = unlabeled_targets(pu1, pu2, sharpen_t)
            targets += [tu, tu]
    all_x, all_t = torch.cat(parts), torch.cat(targets)
    mx, mt = mix(all_x, all_t, lam, perm)
    with autocast(dev, bf16):
        logits = model(mx)
    return ssl_loss(logits, mt, 2 * b_l, lambda_u, lambda_prior, num_classes)


def ssl_epoch(model, opt, images, lab_idx: torch.Tensor, lab_labels: torch.Tensor, lab_w: torch.Tensor,
              unl_idx: torch.Tensor, num_classes: int, mm: MixMatchSettings, epoch: int, generator,
              rng: np.random.Generator, iters: int, loss_fn=None, bf16: bool = False, part=None, peer=None) -> dict:
    """One classification phase of Alg. 1 (lines 20-23): ``iters`` MixMatch steps.

    ``lab_idx``/``unl_idx`` index the training images; ``lab_labels`` are the
    (corrected) labels and ``lab_w`` the refinement weights of the labeled
    samples; ``mm`` the settings it reads (:class:`MixMatchSettings`), ``epoch``
    the run's epoch (the ramp-up of lambda_MSE). Every step takes ``batch_size`` labeled and ``batch_size``
    unlabeled images (index streams reshuffled every pass and long enough for
    all steps), so every step has the same shape. ``loss_fn`` replaces
    :func:`mixmatch_loss` (its compiled version): it then gets ``lam`` and
    ``lambda_u`` as device tensors (float64 and float32, which round as the
    Python floats of the eager step do). ``part`` (DDP,
    :func:`hallnll.distributed.batch_part`): each rank trains on its slice of
    every global batch, drawn alike on every rank; its mixup permutation is the
    order of the first entries of the global one (a uniform permutation of its
    part). ``peer``: the other network of a co-trained run, put in eval mode for
    the epoch (DivideMix's ``net2.eval()``) and co-guessing the unlabeled
    targets. Returns 0-dim device tensors (mean loss, L_CE, L_MSE).
    """
    dev = images.device
    bs = mm.batch_size
    n_l, n_u = len(lab_idx), len(unl_idx)
    pad, flip = mm.crop_padding, mm.hflip

    def stream(n):  # indices 0..n-1, reshuffled every pass, enough for all iterations
        reps = -(-iters * bs // max(n, 1))
        return torch.cat([torch.randperm(n, device=dev, generator=generator) for _ in range(reps)])

    pl = stream(n_l)
    pu = stream(n_u) if n_u > 0 else None
    # mixup coefficients of all steps (the same numbers as one draw per step) and the L_MSE ramp-up
    lams = rng.beta(mm.mixup_alpha, mm.mixup_alpha, size=iters)
    lams = np.maximum(lams, 1 - lams)
    lambda_us = [mm.lambda_mse * rampup(epoch + it / iters, mm.warmup_epochs, mm.rampup_epochs) for it in range(iters)]
    if loss_fn is not None:  # one copy per epoch, asynchronous from pinned memory on CUDA
        lam_t, lu_t = (to_device(torch.tensor(v, dtype=dt), dev) for v, dt in ((lams, torch.float64),
                                                                              (lambda_us, torch.float32)))
    tot = torch.zeros(3, device=dev)
    model.train()
    if images.streamed:  # the workers decode each step's labeled and unlabeled batch ahead, two views each
        mine = (lambda b: b[part(len(b))]) if part is not None else (lambda b: b)  # noqa: E731  DDP: this rank's part
        plan = []
        for it in range(iters):
            plan.append(mine(lab_idx[pl[it * bs:(it + 1) * bs]]))
            if pu is not None:
                plan.append(mine(unl_idx[pu[it * bs:(it + 1) * bs]]))
        images.plan(plan, train=True, views=2)
    if peer is not None:
        peer.eval()
    for it in range(iters):
        sl = pl[it * bs:(it + 1) * bs]
        il = lab_idx[sl]
        iu = unl_idx[pu[it * bs:(it + 1) * bs]] if pu is not None else None
        # the step's random numbers, in the order the views use them: labeled 1, 2, unlabeled 1, 2, then mixup
        draws = [augment_draws(len(il), pad, flip, generator, dev) for _ in range(2)]
        if iu is not None:
            draws += [augment_draws(len(iu), pad, flip, generator, dev) for _ in range(2)]
        perm = torch.randperm(2 * len(il) + (2 * len(iu) if iu is not None else 0), device=dev, generator=generator)
        y_l, w_l = lab_labels[sl], lab_w[sl]
        if part is not None:  # DDP: this rank's share of the global batch (see the docstring)
            pl_, pu_ = part(len(il)), (part(len(iu)) if iu is not None else None)
            il, y_l, w_l = il[pl_], y_l[pl_], w_l[pl_]
            cut = lambda d, s_: tuple(x[s_] if x is not None else None for x in d)  # noqa: E731
            draws = [cut(d, pl_) for d in draws[:2]] + [cut(d, pu_) for d in draws[2:]]
            if iu is not None:
                iu = iu[pu_]
            perm = perm[:2 * len(il) + (2 * len(iu) if iu is not None else 0)].argsort()
        if loss_fn is None:
            loss, l_ce, l_mse = mixmatch_loss(model, images, il, iu, draws, y_l, w_l, float(lams[it]),
                                              perm, lambda_us[it], num_classes, mm.sharpen_t, mm.lambda_prior, pad, bf16,
                                              peer=peer)
        else:
            loss, l_ce, l_mse = loss_fn(model, images, il, iu, draws, y_l, w_l, lam_t[it], perm,
                                        lu_t[it], num_classes, mm.sharpen_t, mm.lambda_prior, pad, bf16, peer=peer)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot += torch.stack([loss.detach(), l_ce.detach(), l_mse.detach()])
    if peer is not None:
        peer.train()
    tot = tot / max(iters, 1)
    return {"loss": tot[0], "l_ce": tot[1], "l_mse": tot[2]}
