"""The speed levers of the second speed issue keep the method unchanged, checked on the CPU.

- the loss GMM in torch (``gmm_backend=torch``) equals scikit-learn's
  GaussianMixture on real losses (a digits model, a CIFAR-10 subset model):
  the k-means initialisation label for label, omega, the easy sets;
- the hallucinator phase with its draws made up front, and as fixed-buffer
  steps (``hal_graph``: a CUDA graph on CUDA), gives the anchors of the plain
  loop of Alg. 1 lines 9-15 bit for bit, with no host read;
- every training step of warm-up and SSL has one batch shape;
- the compiled warm-up / MixMatch steps (aot_eager here) train like eager;
- foreach SGD equals torch's default, fused is the same update;
- cuDNN benchmark mode is set for an epoch and restored; thread shares of
  parallel workers; ``hallnll bench --levers`` and ``benchmarks/gpu-speed.sh
  --dry-run``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hallnll import engine, gmm_torch, levers, selection, ssl
from hallnll.tools import jobs
from hallnll.config import ConfigError, load_config
from hallnll.data import DeviceImages, ImageData
from hallnll.hallucination import Hallucinator, hallucinate, hallucination_loss, sample_partners
from hallnll.levers import StaticHalStep
from hallnll.models import build_model
from hallnll.run import Run
from hallnll.train import prepare

REPO = Path(__file__).resolve().parents[1]
DIGITS = ["dataset=digits", "arch=small_cnn", "device=cpu", "crop_padding=1", "hflip=false", "noise=symmetric",
          "noise_rate=0.4", "progress=false", "batch_size=128", "lr_decay_epoch=0"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _run(overrides=(), epochs=4, warmup=2):
    cfg = load_config(None, DIGITS + [f"epochs={epochs}", f"warmup_epochs={warmup}", *overrides])
    data, noisy, _ = prepare(cfg, progress=False)
    return Run(cfg, data, noisy)


# ================================================================ the GMM in torch
@pytest.fixture(scope="module")
def digits_losses():
    """Per-sample losses of a digits CNN after 1, 2 and 3 warm-up epochs (40% symmetric noise)."""
    torch.set_num_threads(1)
    run = _run(epochs=3, warmup=3)
    out = []
    for _ in range(3):
        run.warmup_epoch()
        logits, _ = engine.predict(run.model, run.train_x, 1024)
        out.append((selection.per_sample_loss(logits, run.given), run.given))
    return out


def _sklearn_kmeans(x: torch.Tensor, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(2, n_init=1, random_state=np.random.RandomState(seed)).fit(x.numpy().reshape(-1, 1)).labels_


def _compare_gmms(losses, labels, seeds=(0, 1, 2), max_iter=10):
    for seed in seeds:
        x = selection.normalized_losses(losses)
        assert np.array_equal(gmm_torch.kmeans_labels(x, seed).numpy(), _sklearn_kmeans(x, seed)), seed
        a = selection.fit_loss_gmm(losses, max_iter, seed, "sklearn")
        b = selection.fit_loss_gmm(losses, max_iter, seed, "torch")
        assert a.backend == "sklearn" and b.backend == "torch"
        wa, wb = a.omega(), b.omega()
        assert float((wa - wb).abs().max()) < 1e-5, seed  # the issue asks for 1e-3
        np.testing.assert_allclose(b.means, a.means, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b.stds, a.stds, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b.weights, a.weights, rtol=1e-9, atol=1e-12)
        assert a.clean == b.clean and np.array_equal(a.losses, b.losses)
        for p in (0.4, 0.6):  # Eq. 1
            assert torch.equal(selection.select_easy(wa, labels, 10, p), selection.select_easy(wb, labels, 10, p))
        assert torch.equal(selection.select_gmm(wa, 0.5), selection.select_gmm(wb, 0.5))


def test_torch_gmm_equals_sklearn_on_digits_losses(digits_losses):
    for losses, labels in digits_losses:
        _compare_gmms(losses, labels)
    # the EM loop's convergence mask: a long budget stops where scikit-learn stops (tol), a short one cuts it
    losses, labels = digits_losses[-1]
    for max_iter in (1, 2, 100):
        _compare_gmms(losses, labels, seeds=(0,), max_iter=max_iter)


def test_torch_gmm_equals_sklearn_on_cifar_subset_losses(cifar10):
    """A small CNN trained one epoch on 1,200 CIFAR-10 (JPEG q75 copy) images with 40% symmetric noise."""
    from hallnll.noise.generators import symmetric

    n = 1200
    x, y = cifar10.x_train[:n], cifar10.y_train[:n]
    noisy = symmetric(y, 10, 0.4, seed=1)
    images = DeviceImages(x, cifar10.mean, cifar10.std, "cpu")
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 3)
    opt = engine.make_optimizer(model.parameters(), 0.02, 0.9, 5e-4)
    engine.ce_epoch(model, images, noisy, opt, 128, torch.Generator().manual_seed(0), 4, True)
    logits, _ = engine.predict(model, images, 1000)
    losses = selection.per_sample_loss(logits, noisy)
    assert float(losses.std()) > 0.05  # a real spread of losses, not a constant
    _compare_gmms(losses, noisy, seeds=(0, 3))


def test_kmeans_stopping_rules_on_hard_shapes():
    """Shapes where Lloyd takes many steps or stops on the centre-shift tolerance; many seeds."""
    g = torch.Generator().manual_seed(0)
    sets = [torch.rand(3000, generator=g),  # uniform: no gap between the clusters
            torch.distributions.Exponential(torch.tensor(1.0)).sample((3000,)),
            torch.cat([torch.randn(2500, generator=g) * 0.1, 0.6 + torch.randn(500, generator=g) * 0.3]),
            torch.randn(4000, generator=g).abs() ** 3]
    for data in sets:
        x = selection.normalized_losses(data)
        for seed in range(8):
            assert np.array_equal(gmm_torch.kmeans_labels(x, seed).numpy(), _sklearn_kmeans(x, seed)), seed


def test_torch_gmm_reads_nothing_on_the_host(digits_losses, no_host_reads):
    losses, _ = digits_losses[0]
    g = selection.fit_loss_gmm(losses, 10, 0, "torch")
    assert g.posterior.shape == losses.shape and g.posterior.dtype == torch.float32


def test_gmm_backend_is_checked():
    with pytest.raises(ConfigError, match="gmm_backend"):
        load_config(None, ["gmm_backend=gpu"])
    with pytest.raises(ValueError, match="gmm backend"):
        selection.fit_loss_gmm(torch.rand(10), backend="cuml")


# ================================================================ the hallucinator phase
def _partners_reference(labels, u_idx, num_classes, generator):
    """sample_partners as it was: torch.multinomial over the other present classes, then a uniform member."""
    dev = labels.device
    counts = torch.bincount(labels, minlength=num_classes)
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    w = (counts > 0).float().expand(len(u_idx), num_classes).clone()
    w[torch.arange(len(u_idx), device=dev), labels[u_idx]] = 0.0
    cls = torch.multinomial(w, 1, generator=generator).squeeze(1)
    r = torch.rand(len(u_idx), device=dev, generator=generator)
    return order[starts[cls] + (r * counts[cls]).long().clamp_max(counts[cls] - 1)]


def _phase_reference(hal, opt, classifier, feats, labels, num_classes, iters, batch, lambda_p, gen):
    """Alg. 1 lines 9-15 as a plain loop, drawing every mini-batch's partners when it is used."""
    n = len(feats)
    w, b = classifier.weight.detach(), classifier.bias.detach()
    perm = torch.randperm(n, generator=gen)
    reps = -(-iters * batch // n)
    if reps > 1:
        perm = torch.cat([perm] + [torch.randperm(n, generator=gen) for _ in range(reps - 1)])
    anchors, parents, tot = [], [], torch.zeros(3)
    for it in range(iters):
        u = perm[it * batch:(it + 1) * batch]
        v = _partners_reference(labels, u, num_classes, gen)
        s_a = hal(feats[u], feats[v])
        loss, clo, ce = hallucination_loss(s_a, feats[u], feats[v], F.linear(s_a, w, b), labels[u], lambda_p)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        anchors.append(s_a.detach())
        parents.append(torch.stack([u, v], 1))
        tot += torch.stack([loss.detach(), clo.detach(), ce.detach()])
    return torch.cat(anchors), torch.cat(parents), tot / iters


def test_partner_draws_are_those_of_one_multinomial_per_iteration():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (300,), generator=g)
    labels[labels == 4] = 5  # a class without easy samples
    u = torch.randint(0, 300, (7, 40), generator=g)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batched = sample_partners(labels, u, 6, g1)
    ref = torch.stack([_partners_reference(labels, u[i], 6, g2) for i in range(7)])
    assert torch.equal(batched, ref) and torch.equal(g1.get_state(), g2.get_state())
    assert (labels[batched] != labels[u]).all() and not (labels[batched] == 4).any()


@pytest.fixture(scope="module")
def easy_features():
    """f_theta of the easy set (Eq. 1) of a digits CNN after 2 warm-up epochs, its labels and g_rho."""
    torch.set_num_threads(1)
    run = _run(epochs=3, warmup=2)
    run.warmup_epoch(), run.warmup_epoch()
    ez = run.easiness()
    sel = run.select_easy(ez.omega)
    easy = sel.easy_mask.nonzero().squeeze(1)
    return ez.feats[easy], run.given[easy], run.model.classifier, ez.feats[sel.hard_index]


def test_hallucinator_phase_gives_the_plain_loops_anchors_bit_for_bit(easy_features):
    feats, labels, clf, hard = easy_features
    d, batch, iters = feats.shape[1], 64, 9
    torch.manual_seed(0)
    hal0 = Hallucinator(d).state_dict()
    out = {}
    for mode in ("reference", "eager", "static"):
        hal = Hallucinator(d)
        hal.load_state_dict(hal0)
        opt = engine.make_optimizer(hal.parameters(), 0.02, 0.9, 5e-4)
        gen = torch.Generator().manual_seed(7)
        step = StaticHalStep(hal, opt, clf, batch, 0.6, "cpu") if mode == "static" else None
        for phase in range(2):  # two phases: the second starts from momentum buffers, at a lower lr
            engine.set_lr(opt, 0.02 if phase == 0 else 0.002)
            if mode == "reference":
                res = _phase_reference(hal, opt, clf, feats, labels, 10, iters, batch, 0.6, gen)
            else:
                r = hallucinate(hal, opt, clf, feats, labels, 10, iters, batch, 0.6, gen, static_step=step)
                assert torch.equal(r.labels, labels[r.parents[:, 0]])
                res = (r.anchors, r.parents, torch.stack([r.loss, r.closeness, r.ce]))
        out[mode] = res + ([p.detach().clone() for p in hal.parameters()],
                           [opt.state[p]["momentum_buffer"].clone() for p in hal.parameters()], gen.get_state())
    ref = out["reference"]
    for mode in ("eager", "static"):
        got = out[mode]
        for a, b in zip(got[:3], ref[:3]):
            assert torch.equal(a, b), mode
        for a, b in zip(got[3] + got[4], ref[3] + ref[4]):
            assert torch.equal(a, b), mode
        assert torch.equal(got[5], ref[5]), mode
    # the hard selection those anchors make is the same too
    labels_a = labels[ref[1][:, 0]]
    sa = selection.select_hard(ref[0], labels_a, hard, 10, 0.8, 3)
    sb = selection.select_hard(out["static"][0], labels_a, hard, 10, 0.8, 3)
    assert int(sa.clean.sum()) > 0 and torch.equal(sa.clean, sb.clean) and torch.equal(sa.corrected, sb.corrected)


def test_hallucinator_static_step_reads_nothing_on_the_host(no_host_reads):
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(300, 16, generator=g)
    labels = torch.arange(300) % 10
    hal = Hallucinator(16)
    opt = engine.make_optimizer(hal.parameters(), 0.02, 0.9, 5e-4)
    clf = torch.nn.Linear(16, 10)
    step = StaticHalStep(hal, opt, clf, 64, 0.6, "cpu")
    res = hallucinate(hal, opt, clf, feats, labels, 10, iters=3, batch_size=64, generator=g, static_step=step)
    assert res.anchors.shape == (192, 16) and res.loss.dim() == 0


def test_run_with_hal_graph_trains_like_the_default():
    rows = []
    for hal_graph in (False, True):  # on 673 of the digits (6 updates of h_phi an SSL epoch: the graph replayed)
        run = _run([f"hal_graph={str(hal_graph).lower()}", "train_subset=673"], epochs=4, warmup=2)
        rows.append([run.epoch() for _ in range(4)])
        assert (run.hal_step is not None) == hal_graph
    for a, b in zip(*rows):
        a, b = dict(a), dict(b)
        a.pop("seconds"), b.pop("seconds")
        assert a == b


# ================================================================ static shapes
def _record_shapes(module):
    shapes = []
    handle = module.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    return shapes, handle


@pytest.mark.parametrize("p", [0.4, 0.05])
def test_every_training_step_has_one_shape(p):
    """1,347 digits at batch 128 (a ragged last batch of 67), and a labeled set smaller than a batch (p=0.05)."""
    run = _run([f"p={p}"], epochs=4, warmup=2)
    bs = run.cfg.batch_size
    shapes, h = _record_shapes(run.model)
    hal_shapes, hh = _record_shapes(run.hal)
    for _ in range(2):
        run.warmup_epoch()
    assert set(shapes) == {(bs, 1, 8, 8)} and len(shapes) == 2 * (1347 // bs)
    shapes.clear()
    for _ in range(2):
        _, sel, _ = run.select()
        assert int(sel.labeled_mask.sum()) < 1347  # there is an unlabeled part
        run.ssl_epoch(sel)
    h.remove(), hh.remove()
    # the no-grad forward of the 4 views and the training forward of the mixed batch: 4B rows each
    train = [s for s in shapes if s[0] != run.cfg.eval_batch_size and s[0] != 1347 % run.cfg.eval_batch_size]
    assert set(train) == {(4 * bs, 1, 8, 8)}
    assert set(hal_shapes) == {(bs, run.model.feature_dim)}


# ================================================================ compiled steps (aot_eager on the CPU)
def _two_epochs(overrides):
    torch._dynamo.reset()
    run = _run([*overrides, "train_subset=512"], epochs=2, warmup=1)  # 4 steps of 128 an epoch: compiled and replayed
    rows = [run.epoch(), run.epoch()]
    return run, rows


def test_compiled_steps_train_like_eager():
    eager, r0 = _two_epochs([])
    comp, r1 = _two_epochs(["compile_step=true", "compile_backend=aot_eager"])
    assert comp.ce_loss is not None and comp.mixmatch_loss is not None and comp.train_model is comp.model
    model, r2 = _two_epochs(["compile=true", "compile_backend=aot_eager"])
    assert model.train_model is not model.model and model.ce_loss is None
    for rows, run in ((r1, comp), (r2, model)):
        for a, b in zip(rows, r0):
            for k in ("train_loss", "l_ce", "l_mse", "test_acc"):
                if k in b:
                    assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
        for pa, pb in zip(run.model.parameters(), eager.model.parameters()):
            torch.testing.assert_close(pa, pb, rtol=1e-3, atol=1e-4)
    # inductor is the default backend: on the CPU it is not applied (minutes of C++ codegen)
    cpu = _run(["compile_step=true", "compile=true"], epochs=2, warmup=1)
    assert cpu.ce_loss is None and cpu.mixmatch_loss is None and cpu.train_model is cpu.model


def test_compiled_mixmatch_step_gets_the_eager_numbers():
    """ssl_epoch's tensor path (lam float64, lambda_u float32 on the device) rounds as the Python floats do."""
    d = load_config(None, DIGITS)
    from hallnll.data import load_digits

    data = load_digits()
    images = DeviceImages(data.x_train, data.mean, data.std, "cpu")
    out = []
    for loss_fn in (None, ssl.mixmatch_loss):  # the function itself, given the tensors the compiled one gets
        torch.manual_seed(0)
        m = build_model("small_cnn", 10, 1)
        opt = engine.make_optimizer(m.parameters(), 0.02, 0.9, 5e-4)
        lab, unl = torch.arange(0, 1347, 2), torch.arange(1, 1347, 2)
        r = ssl.ssl_epoch(m, opt, images, lab, data.y_train[lab], torch.full((len(lab),), 0.7), unl, 10,
                          ssl.MixMatchSettings.of(d.replace(warmup_epochs=0)), 3, torch.Generator().manual_seed(1), np.random.default_rng(2),
                          iters=4, loss_fn=loss_fn)
        out.append((r, [p.detach().clone() for p in m.parameters()]))
    for k in ("loss", "l_ce", "l_mse"):
        assert torch.equal(out[0][0][k], out[1][0][k]), k
    assert all(torch.equal(a, b) for a, b in zip(out[0][1], out[1][1]))


@pytest.mark.skipif(os.environ.get("HALLNLL_TEST_INDUCTOR") != "1",
                    reason="inductor on the CPU compiles C++ for minutes on this 2-core machine; "
                           "aot_eager above checks the compiled steps. Set HALLNLL_TEST_INDUCTOR=1 to run it.")
def test_inductor_compiled_steps_train_like_eager():
    _, r0 = _two_epochs([])
    torch._dynamo.reset()
    cfg = load_config(None, DIGITS + ["epochs=2", "warmup_epochs=1", "compile_step=true"])
    data, noisy, _ = prepare(cfg, progress=False)
    run = Run(cfg, data, noisy)
    run.ce_loss = levers.compiled(engine.ce_loss)  # inductor on the CPU, forced for this check
    run.mixmatch_loss = levers.compiled(ssl.mixmatch_loss)
    r1 = [run.epoch(), run.epoch()]
    for a, b in zip(r1, r0):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)


# ================================================================ SGD, cuDNN, config
def test_foreach_sgd_equals_default_and_fused_is_the_same_update():
    from hallnll.data import load_digits

    data = load_digits()
    images = DeviceImages(data.x_train, data.mean, data.std, "cpu")
    params = {}
    for impl in ("default", "foreach", "fused"):
        torch.manual_seed(0)
        m = build_model("small_cnn", 10, 1)
        opt = engine.make_optimizer(m.parameters(), 0.05, 0.9, 5e-4, impl)
        assert opt.defaults["foreach"] is (True if impl == "foreach" else None)
        assert opt.defaults["fused"] is (True if impl == "fused" else None)
        engine.ce_epoch(m, images, data.y_train, opt, 128, torch.Generator().manual_seed(0), 1, False)
        params[impl] = [p.detach().clone() for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(params["foreach"], params["default"]))
    for a, b in zip(params["fused"], params["default"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="sgd_impl"):
        load_config(None, ["sgd_impl=adamw"])


def test_cudnn_benchmark_is_set_for_the_block_and_restored():
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with levers.cudnn_benchmark(True, torch.device("cuda")):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
        with levers.cudnn_benchmark(True, torch.device("cpu")):  # no effect off CUDA
            assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_speed_settings_are_checked():
    assert load_config(None, []).cudnn_benchmark is True and load_config(None, []).gmm_backend == "torch"
    for bad, key in (("compile_mode=fast", "compile_mode"), ("compile_backend=", "compile_backend")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])
    assert levers.compile_active(torch.device("cuda")) and not levers.compile_active(torch.device("cpu"))
    assert levers.compile_active(torch.device("cpu"), "aot_eager")


# ================================================================ parallel runs
def test_a_worker_takes_its_share_of_the_cpus(monkeypatch):
    """What run_jobs' initializer does in each worker process (here in this one, restored after)."""
    for k in jobs.THREAD_ENV:
        monkeypatch.setenv(k, "99")
    jobs._worker_init(3)
    assert torch.get_num_threads() == 3 and all(os.environ[k] == "3" for k in jobs.THREAD_ENV)
    cpus = len(os.sched_getaffinity(0))
    assert jobs.worker_threads(1) == cpus and jobs.worker_threads(cpus + 5) == 1
    assert jobs.worker_threads(2) == max(1, cpus // 2)


def test_settings_added_since_a_run_count_at_their_defaults(tmp_path):
    import yaml

    from hallnll.train import fit

    params = str(REPO / "params" / "digits-quick.yaml")
    ov = ["epochs=1", "warmup_epochs=1", "lr_decay_epoch=0", "noise=symmetric", "variant=ce", "progress=false", "checkpoint_every=0"]
    job = jobs.Job("s0", params, ov, 0, tmp_path / "s0")
    fit(job.config(), job.out_dir)
    assert jobs.finished(job)
    saved = yaml.safe_load((tmp_path / "s0" / "config.yaml").read_text())
    for k in ("gmm_backend", "hal_graph", "sgd_impl", "cudnn_benchmark", "compile_step"):
        saved.pop(k)
    (tmp_path / "s0" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert jobs.finished(job)
    saved["lr"] = 0.5
    (tmp_path / "s0" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert not jobs.finished(job)


# ================================================================ the bench and the GPU command
def test_lever_configs_are_cumulative():
    from hallnll.tools import bench, bench_levers

    base = bench.bench_config(None, ["dataset=digits"])
    cfgs = {name: cfg for name, _, cfg in bench_levers.lever_configs(base)}
    assert list(cfgs) == list(bench_levers.LEVER_NAMES)
    b = cfgs["baseline"]
    assert (b.bf16, b.channels_last, b.cudnn_benchmark, b.gmm_backend, b.hal_graph, b.compile_step) == \
        (False, False, False, "sklearn", False, False)
    last = cfgs["cuda_graphs"]
    assert (last.bf16, last.channels_last, last.sgd_impl, last.gmm_backend, last.hal_graph, last.compile_step,
            last.compile_mode) == (True, True, "fused", "torch", True, True, "reduce-overhead")
    # a subset measures the same configurations as the full list
    sub = {name: cfg for name, _, cfg in bench_levers.lever_configs(base, ["baseline", "gmm_torch"])}
    assert sub["gmm_torch"] == cfgs["gmm_torch"]
    with pytest.raises(ConfigError, match="unknown lever"):
        bench_levers.lever_configs(base, ["warp_speed"])


def test_gpu_speed_script_dry_run(tmp_path):
    """benchmarks/gpu-speed.sh --dry-run: every step of the GPU command on digits (the CPU), its 8 files."""
    out = tmp_path / "speed"
    # no time budget here: on a loaded CPU the budget would cut levers short (the GPU run keeps its 530 s)
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "HALLNLL_SPEED_BUDGET": "100000",
           "HALLNLL_SPEED_STEP_LIMITS": "0"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu-speed.sh"), "--dry-run", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["env.txt", "resnet34.json", "resnet34.log", "parallel.json", "parallel.log",
                            "levers.json", "levers.log", "summary.md"])
    lev = json.loads((out / "levers.json").read_text())
    assert [e["name"] for e in lev["levers"]] == ["baseline", "bf16", "channels_last", "cudnn_benchmark", "fused_sgd",
                                                 "gmm_torch", "hal_graph", "compile_step", "cuda_graphs"]
    for e in lev["levers"]:
        assert "error" not in e and "skipped" not in e, e
        assert e["warmup_epoch"] > 0 and e["ssl_epoch"] > 0 and 0 <= e["test_acc"] <= 1
    by = {e["name"]: e for e in lev["levers"]}
    assert not by["bf16"]["active"] and by["compile_step"]["active"] and not by["cuda_graphs"]["active"]
    g, h = by["gmm_torch"]["check"], by["hal_graph"]["check"]
    assert g["max_abs_omega_diff"] < 1e-5 and g["same_easy_eq1"] and g["same_easy_threshold"]
    assert h["max_abs_anchor_diff"] == 0 and h["same_parents"] and h["same_clean_hard"] and h["same_corrected"]
    # on the CPU every lever computes what the baseline computes: the same short-run accuracy
    assert {e["test_acc"] for e in lev["levers"]} == {by["baseline"]["test_acc"]}
    par = json.loads((out / "parallel.json").read_text())
    assert par["complete"] and par["ratio"] > 0 and len(par["three_best_acc"]) == 3
    assert par["three_torch_threads"] == [1] * 3  # each run under its config's threads (1), never more than its share
    r34 = json.loads((out / "resnet34.json").read_text())
    assert r34["config"]["sgd_impl"] == "fused" and r34["config"]["hal_graph"] is True
    md = (out / "summary.md").read_text()
    assert "| gmm_torch | yes |" in md and "ratio" in md and "Step 1, small_cnn" in md and "missing" not in md
