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

import numpy as np
import torch
import torch.nn.functional as F

from .engine import autocast


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


def ssl_epoch(model, opt, images, lab_idx: torch.Tensor, lab_labels: torch.Tensor, lab_w: torch.Tensor,
              unl_idx: torch.Tensor, num_classes: int, cfg, epoch: int, generator, rng: np.random.Generator,
              iters: int, step_fn=None, bf16: bool | None = None) -> dict:
    """One classification phase of Alg. 1 (lines 20-23): ``iters`` MixMatch steps.

    ``lab_idx``/``unl_idx`` index the training images; ``lab_labels`` are the
    (corrected) labels and ``lab_w`` the refinement weights of the labeled
    samples. Returns 0-dim device tensors (mean loss, L_CE, L_MSE).
    """
    dev = images.device
    bs = cfg.batch_size
    n_l, n_u = len(lab_idx), len(unl_idx)
    pad, flip = cfg.crop_padding, cfg.hflip
    if bf16 is None:  # the caller did not decide: bf16 where cfg asks for it on this device
        from .engine import use_bf16

        bf16 = use_bf16(cfg, dev)
    eye = torch.eye(num_classes, device=dev)

    def stream(n):  # indices 0..n-1, reshuffled every pass, enough for all iterations
        reps = -(-iters * bs // max(n, 1))
        return torch.cat([torch.randperm(n, device=dev, generator=generator) for _ in range(reps)])

    pl = stream(n_l)
    pu = stream(n_u) if n_u > 0 else None
    tot = torch.zeros(3, device=dev)
    model.train()
    for it in range(iters):
        sl = pl[it * bs:(it + 1) * bs]
        il = lab_idx[sl]
        xl1 = images.batch(il, True, pad, flip, generator)
        xl2 = images.batch(il, True, pad, flip, generator)
        parts = [xl1, xl2]
        if pu is not None:
            iu = unl_idx[pu[it * bs:(it + 1) * bs]]
            xu1 = images.batch(iu, True, pad, flip, generator)
            xu2 = images.batch(iu, True, pad, flip, generator)
            parts += [xu1, xu2]
        b_l = len(il)
        with torch.no_grad():
            with autocast(dev, bf16):
                probs = torch.softmax(model(torch.cat(parts)).float(), dim=1)
            tx = labeled_targets(probs[:b_l], probs[b_l:2 * b_l], eye[lab_labels[sl]], lab_w[sl], cfg.sharpen_t)
            targets = [tx, tx]
            if pu is not None:
                b_u = len(iu)
                tu = unlabeled_targets(probs[2 * b_l:2 * b_l + b_u], probs[2 * b_l + b_u:], cfg.sharpen_t)
                targets += [tu, tu]
        lam = float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
        lam = max(lam, 1 - lam)
        all_x, all_t = torch.cat(parts), torch.cat(targets)
        perm = torch.randperm(len(all_x), device=dev, generator=generator)
        mx, mt = mix(all_x, all_t, lam, perm)
        lambda_u = cfg.lambda_mse * rampup(epoch + it / iters, cfg.warmup_epochs, cfg.rampup_epochs)
        with autocast(dev, bf16):
            logits = model(mx)
        loss, l_ce, l_mse = ssl_loss(logits, mt, 2 * b_l, lambda_u, cfg.lambda_prior, num_classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot += torch.stack([loss.detach(), l_ce.detach(), l_mse.detach()])
        if step_fn is not None:
            step_fn()
    tot = tot / max(iters, 1)
    return {"loss": tot[0], "l_ce": tot[1], "l_mse": tot[2]}
