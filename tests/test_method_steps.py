"""Each step of §3 on tiny tensors with answers worked out by hand."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hallnll import reporting, selection, ssl
from hallnll.hallucination import Hallucinator, hallucinate, hallucination_loss, sample_partners


# ---------------------------------------------------------------- Eq. 1
def test_quota_eq1_with_a_class_smaller_than_mj():
    # |D| = 20, C = 3, P = 0.5 -> ceil(20 * 0.5 / 3) = ceil(3.33) = 4
    labels = torch.tensor([0] * 10 + [1] * 8 + [2] * 2)
    q = selection.class_balanced_quota(labels, 3, 0.5)
    assert q.tolist() == [4, 4, 2]  # class 2 has only N_2 = 2 < M = 4


def test_select_easy_takes_top_easiness_per_class():
    labels = torch.tensor([0] * 10 + [1] * 8 + [2] * 2)
    omega = torch.linspace(0, 1, 20).flip(0)  # index 0 easiest overall
    omega[15] = 2.0  # the easiest sample of class 1
    mask = selection.select_easy(omega, labels, 3, 0.5)
    assert mask.sum() == 4 + 4 + 2
    assert mask[:4].all() and not mask[4:10].any()  # class 0: its 4 highest
    assert mask[[10, 11, 12, 15]].all() and not mask[[13, 14, 16, 17]].any()  # class 1: 15 jumps the queue
    assert mask[18:].all()  # class 2: both, fewer than M_j
    # the hard subset is the complement
    assert (~mask).sum() == 10


def test_easiness_is_posterior_of_the_low_loss_component():
    g = torch.Generator().manual_seed(0)
    low = 0.1 + 0.02 * torch.randn(300, generator=g)
    high = 2.0 + 0.2 * torch.randn(200, generator=g)
    omega = selection.easiness(torch.cat([low, high]).abs())
    assert omega[:300].min() > 0.9 and omega[300:].max() < 0.1


def test_gmm_selection_is_a_threshold_without_balance():
    omega = torch.tensor([0.9, 0.2, 0.6, 0.5])
    assert selection.select_gmm(omega, 0.5).tolist() == [True, False, True, False]


# ---------------------------------------------------------------- Eq. 2
def test_hallucination_loss_value_by_hand():
    s_u = torch.tensor([[1.0, 0.0]])
    s_v = torch.tensor([[0.0, 1.0]])
    s_a = torch.tensor([[1.0, 1.0]])  # cos to both = 1/sqrt(2)
    logits = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([0])
    total, clo, ce = hallucination_loss(s_a, s_u, s_v, logits, y, lambda_p=0.6)
    expect_clo = -(0.6 + 0.4) / math.sqrt(2)
    expect_ce = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert clo.item() == pytest.approx(expect_clo, abs=1e-6)
    assert ce.item() == pytest.approx(expect_ce, abs=1e-6)
    assert total.item() == pytest.approx(expect_clo + expect_ce, abs=1e-6)


def test_partners_always_come_from_another_class():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    u = torch.arange(6).repeat(50)
    v = sample_partners(labels, u, 4, torch.Generator().manual_seed(0))  # class 3 has no easy sample
    assert (labels[v] != labels[u]).all()
    assert set(labels[v].tolist()) == {0, 1, 2}


def test_hallucinator_phase_trains_only_phi_and_keeps_every_anchor():
    torch.manual_seed(0)
    d, C = 8, 3
    feats = torch.randn(60, d)
    labels = torch.arange(60) % C
    clf = torch.nn.Linear(d, C)
    w0 = clf.weight.clone()
    hal = Hallucinator(d, 16)
    opt = torch.optim.SGD(hal.parameters(), lr=0.1, momentum=0.9)
    first = hallucinate(hal, opt, clf, feats, labels, C, iters=5, batch_size=16, lambda_p=0.6,
                        generator=torch.Generator().manual_seed(1))
    assert first.anchors.shape == (80, d) and first.labels.shape == (80,)
    u, v = first.parents[:, 0], first.parents[:, 1]
    assert torch.equal(first.labels, labels[u]) and (labels[v] != labels[u]).all()
    assert torch.equal(clf.weight, w0)  # g_rho frozen
    later = hallucinate(hal, opt, clf, feats, labels, C, iters=60, batch_size=16, lambda_p=0.6,
                        generator=torch.Generator().manual_seed(2))
    assert later.loss < first.loss  # phi learns Eq. 2


def _clustered_features(d=16, C=4, n=48, seed=0):
    """Fixed non-negative features of C clusters (what ReLU + pooling gives) and a
    fixed linear g_rho along the class means: the hallucinator phase without a CNN."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(C, d, generator=g) ** 3 * 3
    labels = torch.arange(C * n) % C
    feats = F.relu(centers[labels] + 0.3 * torch.randn(C * n, d, generator=g))
    clf = torch.nn.Linear(d, C)
    with torch.no_grad():
        mu = torch.stack([feats[labels == c].mean(0) for c in range(C)])
        clf.weight.copy_(2 * F.normalize(mu, dim=1))
        clf.bias.zero_()
    return feats, labels, clf


@pytest.mark.parametrize("old", [False, True])
def test_hallucinator_phase_reaches_the_minimum_of_eq2_on_fixed_features(old):
    """The phase, with the optimiser a Run gives it (SGD, lr 0.02, momentum 0.9,
    weight decay 5e-4) and 300 updates of batch 32, minimises Eq. 2 as written.

    The bound: CE >= 0 and L_clo >= its analytic minimum, reached at
    a ∝ lambda_p û + (1 - lambda_p) v̂, so L_hal >= min L_clo. Stated
    tolerance: on every easy feature with a partner, mean L_clo within 0.02 of
    that minimum and mean CE below 0.02, g_rho then assigning y~_u. The h_phi
    before issue 17 (``skip=False, norm="free"``) stays >= 0.05 above it.
    """
    torch.manual_seed(0)
    feats, labels, clf = _clustered_features()
    C, d = 4, feats.shape[1]
    hal = Hallucinator(d, **(dict(skip=False, norm="free") if old else dict(lambda_p=0.6)))
    opt = torch.optim.SGD(hal.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    hallucinate(hal, opt, clf, feats, labels, C, iters=300, batch_size=32, lambda_p=0.6,
                generator=torch.Generator().manual_seed(1))
    u = torch.arange(len(feats))
    v = sample_partners(labels, u, C, torch.Generator().manual_seed(2))
    with torch.no_grad():
        s_a = hal(feats[u], feats[v])
        _, clo, ce = hallucination_loss(s_a, feats[u], feats[v], clf(s_a), labels[u], 0.6)
    best = F.normalize(0.6 * F.normalize(feats[u], dim=1) + 0.4 * F.normalize(feats[v], dim=1), dim=1)
    clo_min = -(0.6 * F.cosine_similarity(best, feats[u]) + 0.4 * F.cosine_similarity(best, feats[v])).mean()
    if old:
        assert float(clo + ce) > float(clo_min) + 0.05
        return
    assert float(clo) <= float(clo_min) + 0.02 and float(ce) < 0.02
    geo = reporting.anchor_geometry(s_a, labels[u], torch.stack([u, v], 1), feats, labels, clf, 0.6,
                                    float(feats.norm(dim=1).mean()))
    assert geo["hal_v_share"] > 0.8 and geo["hal_cos_v"] > geo["hal_cos_uv"] + 0.05  # between s_u and s_v
    assert geo["hal_p_u"] > 0.95


def test_anchor_geometry_by_hand():
    e = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.9, 0.1]])
    el = torch.tensor([0, 0, 1, 1])
    par = torch.tensor([[0, 2], [2, 1], [3, 0]])
    clf = torch.nn.Linear(3, 2)
    real = 2.0
    # anchors = their s_u: no way towards s_v, each nearest its own parent
    g0 = reporting.anchor_geometry(e[par[:, 0]], el[par[:, 0]], par, e, el, clf, 0.6, real,
                                   nearest=torch.tensor([4, 4, 7]), n_hard=10)
    assert g0["hal_cos_u"] == pytest.approx(1.0) and g0["hal_v_share"] == pytest.approx(0.0, abs=1e-6)
    assert g0["hal_parent_top"] == 1.0 and g0["hal_nearest_distinct"] == 2
    assert g0["hal_nearest_distinct_share"] == 0.2
    assert g0["hal_norm_ratio"] == pytest.approx(float(e[par[:, 0]].norm(dim=1).mean()) / real)
    # anchors at L_clo's optimum, three times as long: all the way; g_rho by hand
    un, vn = F.normalize(e[par[:, 0]], dim=1), F.normalize(e[par[:, 1]], dim=1)
    opt = 3 * F.normalize(0.6 * un + 0.4 * vn, dim=1)
    g1 = reporting.anchor_geometry(opt, el[par[:, 0]], par, e, el, clf, 0.6, real)
    assert g1["hal_v_share"] == pytest.approx(1.0) and g1["hal_cos_v"] == pytest.approx(g1["hal_opt_cos_v"])
    p = F.softmax(clf(opt), 1).detach()
    assert g1["hal_p_u"] == pytest.approx(float(p[torch.arange(3), el[par[:, 0]]].mean()), abs=1e-6)
    p_r = F.softmax(clf(opt / 3 * real), 1).detach()
    assert g1["hal_p_v_real_norm"] == pytest.approx(float(p_r[torch.arange(3), el[par[:, 1]]].mean()), abs=1e-6)
    # within-class cosine: class 0's two easy features
    c0 = float(F.cosine_similarity(e[:1], e[1:2]))
    c1 = float(F.cosine_similarity(e[2:3], e[3:4]))
    assert g1["easy_within_cos"] == pytest.approx((c0 + c1) / 2)


# ---------------------------------------------------------------- §3.3
def _hand_built():
    # three hard features on the unit circle, at 0, 90 and 180 degrees
    hard = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    ang = torch.tensor([0.05, -0.1, 0.2, 0.25, 0.28, 0.6, 1.6, 1.5, 3.0])  # radians
    anchors = torch.stack([ang.cos(), ang.sin()], 1)
    alabels = torch.tensor([2, 2, 1, 1, 1, 0, 0, 0, 1])
    return hard, anchors, alabels


def test_nearest_anchor_and_threshold():
    hard, anchors, _ = _hand_built()
    idx, sim = selection.nearest_hard(anchors, hard)
    assert idx.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 2]
    assert torch.allclose(sim[:3], torch.tensor([0.05, -0.1, 0.2]).cos())
    # chunking does not change the answer
    idx2, sim2 = selection.nearest_hard(anchors, hard, chunk=2)
    assert torch.equal(idx, idx2) and torch.allclose(sim, sim2)


def test_k_vote_uses_the_k_most_similar_valid_anchors():
    hard, anchors, alabels = _hand_built()
    conf = math.cos(0.3)  # valid: within 0.3 rad of the nearest hard feature; 0.6 rad is not
    res = selection.select_hard(anchors, alabels, hard, 3, lambda_conf=conf, k=3)
    assert res.n_valid_anchors.tolist() == [5, 2, 1]
    assert res.clean.tolist() == [True, True, True]
    # hard 0: the 3 most similar valid anchors (0.05, -0.1, 0.2) say 2, 2, 1 -> 2
    assert res.corrected.tolist() == [2, 0, 1]
    # with K = 5 all five vote: 2, 2, 1, 1, 1 -> 1
    assert selection.select_hard(anchors, alabels, hard, 3, conf, k=5).corrected[0] == 1
    # with K = 1 the single most similar anchor decides
    assert selection.select_hard(anchors, alabels, hard, 3, conf, k=1).corrected.tolist() == [2, 0, 1]
    # a stricter threshold leaves hard 2 (0.14 rad from its anchor) noisy
    strict = selection.select_hard(anchors, alabels, hard, 3, math.cos(0.1), k=3)
    assert strict.clean.tolist() == [True, True, False] and strict.corrected[2] == -1


def test_vote_tie_goes_to_the_most_similar_anchor():
    hard = torch.tensor([[1.0, 0.0]])
    ang = torch.tensor([0.2, 0.1])
    anchors = torch.stack([ang.cos(), ang.sin()], 1)
    res = selection.select_hard(anchors, torch.tensor([0, 1]), hard, 2, lambda_conf=0.5, k=3)
    assert res.corrected.tolist() == [1]
    assert res.confidence.item() == pytest.approx(float((ang.cos()).mean()), abs=1e-6)


# ---------------------------------------------------------------- Eq. 3
def test_mixmatch_targets():
    p1 = torch.tensor([[0.6, 0.4]])
    p2 = torch.tensor([[0.2, 0.8]])
    y = torch.tensor([[1.0, 0.0]])
    # labeled: w*y + (1-w)*mean = 0.5*[1,0] + 0.5*[0.4,0.6] = [0.7, 0.3]; T = 0.5 squares it
    t = ssl.labeled_targets(p1, p2, y, torch.tensor([0.5]), 0.5)
    assert torch.allclose(t, torch.tensor([[0.49, 0.09]]) / 0.58)
    # unlabeled: mean [0.4, 0.6] sharpened -> [0.16, 0.36] / 0.52
    u = ssl.unlabeled_targets(p1, p2, 0.5)
    assert torch.allclose(u, torch.tensor([[0.16, 0.36]]) / 0.52)


def test_mix_and_loss_terms():
    x = torch.tensor([[1.0], [3.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mx, mt = ssl.mix(x, t, 0.75, torch.tensor([1, 0]))
    assert torch.allclose(mx, torch.tensor([[1.5], [2.5]]))
    assert torch.allclose(mt, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    logits = torch.zeros(4, 2)
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    loss, l_ce, l_mse = ssl.ssl_loss(logits, targets, 2, lambda_u=25.0, lambda_prior=0.0, num_classes=2)
    assert l_ce.item() == pytest.approx(math.log(2))
    assert l_mse.item() == pytest.approx(0.25)
    assert loss.item() == pytest.approx(math.log(2) + 25 * 0.25)
    # a uniform mean prediction costs nothing in the prior penalty
    loss_p, _, _ = ssl.ssl_loss(logits, targets, 2, 25.0, 1.0, 2)
    assert loss_p.item() == pytest.approx(loss.item())


def test_rampup():
    assert ssl.rampup(10, 10, 16) == 0.0
    assert ssl.rampup(18, 10, 16) == 0.5
    assert ssl.rampup(40, 10, 16) == 1.0


def _dividemix_refined_labels(net, inputs_x, inputs_x2, labels_x, w_x, T):
    """DivideMix's ``train()`` label refinement, transcribed: the two views' mean softmax,
    w·y + (1 − w)·p̄, sharpened at T (called under ``torch.no_grad()``, as there)."""
    outputs_x, outputs_x2 = net(inputs_x), net(inputs_x2)
    px = (torch.softmax(outputs_x, dim=1) + torch.softmax(outputs_x2, dim=1)) / 2
    px = w_x * labels_x + (1 - w_x) * px
    ptx = px ** (1 / T)
    return ptx / ptx.sum(dim=1, keepdim=True)


def _dividemix_mix_and_loss(net, inputs, targets_x, targets_u, lam, perm, batch_size, lambda_u, C):
    """The second half of DivideMix's ``train()`` step, transcribed: mixup of the four views and
    their targets, one forward, Lx, Lu, the prior penalty and the loss (``lambda_u`` ramped)."""
    inputs_x, inputs_x2, inputs_u, inputs_u2 = inputs
    all_inputs = torch.cat([inputs_x, inputs_x2, inputs_u, inputs_u2], dim=0)
    all_targets = torch.cat([targets_x, targets_x, targets_u, targets_u], dim=0)
    mixed_input = lam * all_inputs + (1 - lam) * all_inputs[perm]
    mixed_target = lam * all_targets + (1 - lam) * all_targets[perm]
    logits = net(mixed_input)
    logits_x, logits_u = logits[:batch_size * 2], logits[batch_size * 2:]
    Lx = -torch.mean(torch.sum(F.log_softmax(logits_x, dim=1) * mixed_target[:batch_size * 2], dim=1))
    Lu = torch.mean((torch.softmax(logits_u, dim=1) - mixed_target[batch_size * 2:]) ** 2)
    prior = torch.ones(C) / C
    pred_mean = torch.softmax(logits, dim=1).mean(0)
    penalty = torch.sum(prior * torch.log(prior / pred_mean))
    dm_loss = Lx + lambda_u * Lu + penalty
    return Lx, Lu, penalty, dm_loss


def test_mixmatch_step_is_dividemix_train_step_with_one_network():
    """One MixMatch step (loss and gradient) equals DivideMix's ``train()`` step of
    Train_cifar.py (github.com/LiJunnan1992/DivideMix), transcribed below with one
    network guessing its own targets (no co-guessing), on a model without
    BatchNorm (DivideMix forwards each view alone, hallnll all four at once: the
    same numbers where no layer looks across the batch)."""
    from hallnll.data.gpu import DeviceImages, augment_draws

    g = torch.Generator().manual_seed(3)
    images = DeviceImages(torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8, generator=g),
                          (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "cpu")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(6, 5))
    il, iu = torch.tensor([0, 3, 5, 7, 8]), torch.tensor([10, 11, 15, 20, 23])
    draws = [augment_draws(5, 2, True, g) for _ in range(4)]
    labels = torch.tensor([1, 4, 0, 2, 2])
    w = torch.tensor([0.9, 0.55, 1.0, 0.7, 0.6])
    lam, perm, lambda_u, T, C = 0.8, torch.randperm(20, generator=g), 7.0, 0.5, 5

    loss, l_ce, l_mse = ssl.mixmatch_loss(net, images, il, iu, draws, labels, w, lam, perm, lambda_u, C, T, 1.0,
                                          padding=2)
    ours = torch.autograd.grad(loss, list(net.parameters()))

    # --- DivideMix, train(): the same views, mixup coefficient and permutation
    inputs_x, inputs_x2 = images.augmented(il, draws[0], 2), images.augmented(il, draws[1], 2)
    inputs_u, inputs_u2 = images.augmented(iu, draws[2], 2), images.augmented(iu, draws[3], 2)
    batch_size = inputs_x.size(0)
    labels_x = torch.zeros(batch_size, C).scatter_(1, labels.view(-1, 1), 1)
    w_x = w.view(-1, 1).type(torch.FloatTensor)
    with torch.no_grad():
        outputs_u11, outputs_u12 = net(inputs_u), net(inputs_u2)
        pu = (torch.softmax(outputs_u11, dim=1) + torch.softmax(outputs_u12, dim=1)) / 2
        ptu = pu ** (1 / T)
        targets_u = ptu / ptu.sum(dim=1, keepdim=True)
        targets_x = _dividemix_refined_labels(net, inputs_x, inputs_x2, labels_x, w_x, T)
    Lx, Lu, penalty, dm_loss = _dividemix_mix_and_loss(net, (inputs_x, inputs_x2, inputs_u, inputs_u2), targets_x,
                                                       targets_u, lam, perm, batch_size, lambda_u, C)
    theirs = torch.autograd.grad(dm_loss, list(net.parameters()))

    assert l_ce.item() == pytest.approx(Lx.item(), rel=1e-5)
    assert l_mse.item() == pytest.approx(Lu.item(), rel=1e-5)
    assert loss.item() == pytest.approx(dm_loss.item(), rel=1e-5)
    assert penalty.item() > 1e-4  # the prior term is in play, not zero by symmetry
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_mixmatch_step_is_dividemix_train_step_with_two_networks():
    """One co-trained MixMatch step (loss and gradient of the network trained) equals
    DivideMix's ``train(epoch, net, net2, ...)`` step of Train_cifar.py, transcribed
    below: the unlabeled targets co-guessed by both networks (net2 in eval mode,
    with BatchNorm, whose running statistics it then uses), the labeled targets
    refined by ``net`` alone. ``ssl_epoch`` puts the peer in eval mode, leaves its
    weights and BatchNorm statistics untouched and hands it back in train mode."""
    from types import SimpleNamespace

    from hallnll.data.gpu import DeviceImages, augment_draws

    g = torch.Generator().manual_seed(4)
    images = DeviceImages(torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8, generator=g),
                          (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "cpu")
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(6, 5))
    net2 = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 5))
    with torch.no_grad():  # running statistics that differ from any batch's
        net2[1].running_mean.uniform_(-0.5, 0.5, generator=g)
        net2[1].running_var.uniform_(0.5, 2.0, generator=g)
    il, iu = torch.tensor([1, 2, 6, 9, 12]), torch.tensor([13, 14, 17, 19, 22])
    draws = [augment_draws(5, 2, True, g) for _ in range(4)]
    labels = torch.tensor([3, 0, 4, 1, 1])
    w = torch.tensor([0.8, 0.5, 0.95, 0.6, 0.7])
    lam, perm, lambda_u, T, C = 0.7, torch.randperm(20, generator=g), 5.0, 0.5, 5

    net2.eval()  # as ssl_epoch does for the peer
    loss, l_ce, l_mse = ssl.mixmatch_loss(net, images, il, iu, draws, labels, w, lam, perm, lambda_u, C, T, 1.0,
                                          padding=2, peer=net2)
    ours = torch.autograd.grad(loss, list(net.parameters()))

    # --- DivideMix, train(epoch, net, net2, ...): net.train(); net2.eval()
    inputs_x, inputs_x2 = images.augmented(il, draws[0], 2), images.augmented(il, draws[1], 2)
    inputs_u, inputs_u2 = images.augmented(iu, draws[2], 2), images.augmented(iu, draws[3], 2)
    batch_size = inputs_x.size(0)
    labels_x = torch.zeros(batch_size, C).scatter_(1, labels.view(-1, 1), 1)
    w_x = w.view(-1, 1).type(torch.FloatTensor)
    with torch.no_grad():
        outputs_u11 = net(inputs_u)
        outputs_u12 = net(inputs_u2)
        outputs_u21 = net2(inputs_u)
        outputs_u22 = net2(inputs_u2)
        pu = (torch.softmax(outputs_u11, dim=1) + torch.softmax(outputs_u12, dim=1)
              + torch.softmax(outputs_u21, dim=1) + torch.softmax(outputs_u22, dim=1)) / 4
        ptu = pu ** (1 / T)
        targets_u = ptu / ptu.sum(dim=1, keepdim=True)
        targets_x = _dividemix_refined_labels(net, inputs_x, inputs_x2, labels_x, w_x, T)
    Lx, Lu, penalty, dm_loss = _dividemix_mix_and_loss(net, (inputs_x, inputs_x2, inputs_u, inputs_u2), targets_x,
                                                       targets_u, lam, perm, batch_size, lambda_u, C)
    theirs = torch.autograd.grad(dm_loss, list(net.parameters()))

    assert l_mse.item() == pytest.approx(Lu.item(), rel=1e-5)
    assert loss.item() == pytest.approx(dm_loss.item(), rel=1e-5)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # co-guessing matters here: the one-network targets give another L_MSE
    alone = ssl.mixmatch_loss(net, images, il, iu, draws, labels, w, lam, perm, lambda_u, C, T, 1.0, padding=2)[2]
    assert abs(alone.item() - Lu.item()) > 1e-4

    # ssl_epoch: the peer in eval mode during the epoch, untouched by it, back in train mode after
    net2.train()
    before = {k: v.clone() for k, v in net2.state_dict().items()}
    cfg = SimpleNamespace(batch_size=5, crop_padding=2, hflip=True, mixup_alpha=4.0, lambda_mse=5.0,
                          warmup_epochs=0, rampup_epochs=0, sharpen_t=T, lambda_prior=1.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    seen = []
    net2.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    ssl.ssl_epoch(net, opt, images, il, labels, w, iu, C, ssl.MixMatchSettings.of(cfg), 1, torch.Generator().manual_seed(0),
                  np.random.default_rng(0), iters=2, bf16=False, peer=net2)
    assert seen == [False, False] and net2.training
    assert all(torch.equal(before[k], v) for k, v in net2.state_dict().items())
