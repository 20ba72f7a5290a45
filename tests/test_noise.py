"""hallnll.noise on real small data (scikit-learn digits) and the offline label files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hallnll import noise as N
from hallnll.tools.cli import main as cli_main
from hallnll.config import Config, ConfigError, load_config
from hallnll.data import DataError

from conftest import shared_file

C = 10


def n_flipped(clean, noisy) -> int:
    return int((clean != noisy).sum())


# ---------------------------------------------------------------- symmetric
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 1.0])
def test_symmetric_hits_rate_exactly(digits, rate):
    y = digits.y_train
    z = N.symmetric(y, C, rate, seed=1)
    assert z.dtype == torch.int64 and z.shape == y.shape
    assert n_flipped(y, z) == round(rate * len(y))  # every chosen sample changes class
    assert int(z.min()) >= 0 and int(z.max()) < C


def test_symmetric_spreads_over_all_other_classes(digits):
    y = digits.y_train
    z = N.symmetric(y, C, 0.4, seed=3)
    rep = N.report(y, z, C, "symmetric", 0.4, 3)
    off = rep.counts.clone()
    off.fill_diagonal_(0)
    assert (off + torch.eye(C, dtype=off.dtype) > 0).all()  # every wrong class is used from every class


def test_symmetric_seeded(digits):
    y = digits.y_train
    a, b, c = (N.symmetric(y, C, 0.4, s) for s in (7, 7, 8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- asymmetric
def test_asymmetric_dividemix_map_exact_per_class(digits):
    y = digits.y_train
    rate = 0.4
    z = N.asymmetric(y, C, rate, seed=1)
    for src in range(C):
        m = y == src
        flipped = z[m] != src
        if src in N.DIVIDEMIX_CIFAR10_MAP:
            assert int(flipped.sum()) == round(rate * int(m.sum())), src
            assert (z[m][flipped] == N.DIVIDEMIX_CIFAR10_MAP[src]).all()
        else:
            assert int(flipped.sum()) == 0, src
    assert N.DIVIDEMIX_CIFAR10_MAP == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def test_asymmetric_pair_flip_for_other_class_counts_and_custom_map(digits):
    keep = digits.y_train < 3
    y = digits.y_train[keep]
    z = N.asymmetric(y, 3, 0.3, seed=2)  # C != 10: j -> (j + 1) % C
    for src in range(3):
        m = y == src
        assert int((z[m] != src).sum()) == round(0.3 * int(m.sum()))
        assert (z[m][z[m] != src] == (src + 1) % 3).all()
    z2 = N.asymmetric(digits.y_train, C, 0.5, seed=2, mapping={0: 6})
    assert int((z2 != digits.y_train).sum()) == round(0.5 * int((digits.y_train == 0).sum()))
    with pytest.raises(N.NoiseError, match="itself"):
        N.asymmetric(digits.y_train, C, 0.5, seed=2, mapping={1: 1})
    with pytest.raises(N.NoiseError, match="outside"):
        N.asymmetric(digits.y_train, C, 0.5, seed=2, mapping={1: 10})


def test_asymmetric_seeded(digits):
    y = digits.y_train
    assert torch.equal(N.asymmetric(y, C, 0.3, 4), N.asymmetric(y, C, 0.3, 4))
    assert not torch.equal(N.asymmetric(y, C, 0.3, 4), N.asymmetric(y, C, 0.3, 5))


# ---------------------------------------------------------------- PTD
@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_ptd_rate_within_tolerance(digits, rate):
    z = N.ptd(digits.x_train, digits.y_train, C, rate, seed=1)
    actual = n_flipped(digits.y_train, z) / len(z)
    assert abs(actual - rate) < 0.05, actual  # binomial spread on 1,347 samples: sd ~0.013


def test_ptd_seeded(digits):
    x, y = digits.x_train, digits.y_train
    a, b, c = (N.ptd(x, y, C, 0.4, s) for s in (1, 1, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ptd_depends_on_the_image(digits):
    x, y = digits.x_train, digits.y_train
    z = N.ptd(x, y, C, 0.4, seed=1)
    # within one clean class the flipped samples go to several classes
    n_targets = [len(set(z[(y == k) & (z != y)].tolist())) for k in range(C)]
    assert max(n_targets) >= 2 and sum(t >= 2 for t in n_targets) >= C // 2, n_targets
    # same seed, same labels, other pixels: other flip targets. A class-conditional
    # process would give the very same labels here.
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    x_perm = x.reshape(len(x), 1, 64)[:, :, perm].reshape(x.shape).contiguous()
    z_perm = N.ptd(x_perm, y, C, 0.4, seed=1)
    z_ref = N.ptd(x, y, C, 0.4, seed=1)
    assert int((z_perm != z_ref).sum()) > 20
    # shuffle the images inside each class (labels unchanged): flip targets move
    g = torch.Generator().manual_seed(1)
    idx = torch.arange(len(y))
    for k in range(C):
        m = (y == k).nonzero().squeeze(1)
        idx[m] = m[torch.randperm(len(m), generator=g)]
    z_shuf = N.ptd(x[idx], y, C, 0.4, seed=1)
    assert int((z_shuf != z_ref).sum()) > 20


def test_ptd_matches_a_per_sample_port_of_xia_et_al(digits):
    """The grouped, chunked version equals the per-sample loop of get_instance_noisy_label,
    which projects the raw pixels (their data.py: ``torch.from_numpy(train_images).float()``)."""
    x, y = digits.x_train[:300], digits.y_train[:300]
    rate, seed = 0.4, 11
    got = N.ptd(x, y, C, rate, seed, std=0.1)

    n, d = len(y), x[0].numel()
    g = torch.Generator().manual_seed(seed)  # the draw order of hallnll.noise.ptd
    q = torch.empty(n, dtype=torch.float64)
    torch.nn.init.trunc_normal_(q, mean=rate, std=0.1, a=0.0, b=1.0, generator=g)
    W = torch.randn(C, d, C, generator=g, dtype=torch.float32).double()
    u = 1.0 - torch.rand(n, generator=g, dtype=torch.float64)
    want = []
    for i in range(n):
        xi = x[i].double().reshape(1, -1)  # 0..255, flattened (C, H, W), no normalisation
        A = xi.mm(W[y[i]]).squeeze(0)
        A[y[i]] = -math.inf
        p = q[i] * torch.softmax(A, 0)
        p[y[i]] += 1 - q[i]
        cdf = p.cumsum(0)
        want.append(int((cdf < u[i] * cdf[-1]).sum()))
    assert got.tolist() == want
    assert ((q >= 0) & (q <= 1)).all()


def test_ptd_has_the_transition_structure_of_xia_et_al_on_cifar10(cifar10):
    """On raw pixels the flips of a class concentrate on a few classes, as in the original.

    Xia et al.'s code (benchmarks/ptd_structure.py, a port of it, CIFAR-10
    40%, seeds 1-5): largest transition entry 0.38 +- 0.02, flips over 2.5
    effective classes, 2.2 noisy classes mostly wrong; fed normalised pixels
    (what hallnll did before): 0.15, 7.6 and 0.2. Symmetric noise: 0.4 / 9 =
    0.044 and 9 classes.
    """
    y = cifar10.y_train
    st = []
    for seed in (1, 2, 3):
        z = N.ptd(cifar10.x_train, y, C, 0.4, seed)
        assert abs(n_flipped(y, z) / len(y) - 0.4) < 0.01
        st.append(N.report(y, z, C, "ptd", 0.4, seed).structure())
    assert min(s["largest_flip"] for s in st) > 0.25, st  # normalised pixels: 0.12-0.18
    assert max(s["destinations"] for s in st) < 4.0, st  # normalised pixels: 7.4-8.0
    assert sum(s["majority_wrong"] for s in st) >= 3, st  # normalised pixels: 0-1 per seed


def test_ptd_edge_rates(digits):
    x, y = digits.x_train, digits.y_train
    assert torch.equal(N.ptd(x, y, C, 0.0, seed=1), y)
    z = N.ptd(x, y, C, 0.3, seed=1, std=0.0)
    assert abs(n_flipped(y, z) / len(y) - 0.3) < 0.05
    with pytest.raises(N.NoiseError, match="uint8"):
        N.ptd(x.float(), y, C, 0.3, seed=1)
    with pytest.raises(N.NoiseError, match="ptd_std"):
        N.ptd(x, y, C, 0.3, seed=1, std=-0.1)


# ---------------------------------------------------------------- classification-based
def test_classification_based_flips_highest_scores_to_argmax_wrong_class():
    clean = torch.tensor([0, 1, 2, 0, 1, 2])
    p = torch.tensor([
        [0.90, 0.08, 0.02],  # score 0.08 -> class 1
        [0.30, 0.40, 0.30],  # score 0.30 (tie 0/2: first wins) -> class 0
        [0.05, 0.60, 0.35],  # score 0.60 -> class 1 (argmax is a wrong class)
        [0.50, 0.10, 0.40],  # score 0.40 -> class 2
        [0.01, 0.98, 0.01],  # score 0.01
        [0.20, 0.25, 0.55],  # score 0.25 -> class 1
    ])
    z = N.classification_based(clean, 3, 0.5, p)  # round(0.5 * 6) = 3 flips: rows 2, 3, 1
    assert z.tolist() == [0, 0, 1, 2, 1, 2]
    z = N.classification_based(clean, 3, 1 / 6, p)  # 1 flip: row 2
    assert z.tolist() == [0, 1, 1, 0, 1, 2]
    assert torch.equal(N.classification_based(clean, 3, 0.0, p), clean)
    with pytest.raises(N.NoiseError, match=r"\[6, 3\]"):
        N.classification_based(clean, 3, 0.5, p[:5])


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.4])
def test_classification_based_exact_rate(digits, rate):
    y = digits.y_train
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(len(y), C, generator=g), 1)
    z = N.classification_based(y, C, rate, p)
    assert n_flipped(y, z) == round(rate * len(y))
    masked = p.scatter(1, y[:, None], -1.0)
    flipped = z != y
    assert torch.equal(z[flipped], masked.argmax(1)[flipped])
    # every flipped sample scores at least as high as every kept one
    score = masked.max(1).values
    assert score[flipped].min() >= score[~flipped].max()


@pytest.fixture(scope="module")
def digits_cfg():
    return load_config(overrides=["dataset=digits", "arch=small_cnn", "device=cpu", "cbased_epochs=2", "batch_size=32",
                                  "cbased_lr=0.05", "cbased_lr_milestones=[1]", "hflip=false", "crop_padding=1",
                                  "noise=classification", "noise_rate=0.2"])


def test_average_softmax_on_digits(digits, digits_cfg):
    state = torch.get_rng_state()
    probs = N.average_softmax(digits, digits_cfg, device="cpu", progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG left alone
    assert probs.shape == (len(digits.y_train), C) and probs.dtype == torch.float32
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-5)
    # two epochs of training (lr 0.05 then 0.01) already rank the true class first for most images
    assert (probs.argmax(1) == digits.y_train).float().mean() > 0.8

    noisy, rep = N.make_noisy_labels(digits_cfg.replace(cbased_epochs=1, cbased_lr_milestones=[]), digits,
                                     progress=False)
    assert n_flipped(digits.y_train, noisy) == round(0.2 * len(noisy))
    assert rep.kind == "classification" and rep.seed == digits_cfg.noise_seed


def test_cbased_defaults_are_chen_et_al_cifar10_recipe():
    """cifar10_gen_dependent.py: 150 epochs, lr 0.1 * 0.2 ** (epoch > 60) * 0.2 ** (epoch > 120), 1-based."""
    cfg = Config()
    assert cfg.cbased_epochs == 150 and cfg.cbased_softmax_augmented

    def learning_rate(lr_init, epoch):  # theirs, verbatim but for math.pow
        optim_factor = 0
        if epoch > 120:
            optim_factor = 2
        elif epoch > 60:
            optim_factor = 1
        return lr_init * math.pow(0.2, optim_factor)

    assert [N.cbased_lr(cfg, e) for e in range(150)] == pytest.approx([learning_rate(0.1, e + 1) for e in range(150)])
    with pytest.raises(ConfigError, match=r"cbased_lr_milestones.*cbased_epochs=20.*\[\]"):
        load_config(overrides=["noise=classification", "cbased_epochs=20"])  # [60, 120] never reached
    with pytest.raises(ConfigError, match="increasing"):
        load_config(overrides=["cbased_lr_milestones=[5, 3]"])
    assert load_config(overrides=["cbased_epochs=30", "cbased_lr_milestones=[12, 24]"]).cbased_lr_milestones == [12, 24]


def test_average_softmax_is_chen_et_al_average_over_epochs_of_augmented_views(digits):
    """The lr schedule is applied per epoch, and the average is theirs: after each epoch, in
    eval mode, the softmax of one training-transform view of every image, summed and divided
    by the epochs. The reference is their loop written out, with the same seeds and draws."""
    cfg = load_config("params/digits-quick.yaml", ["cbased_epochs=4", "cbased_lr=0.05", "cbased_lr_milestones=[1, 3]",
                                                   "cbased_softmax_augmented=true", "device=cpu"])
    seen = []
    got = N.average_softmax(digits, cfg, "cpu", progress=False,
                            on_epoch=lambda e, lr, p: seen.append((e, lr, p.clone())))
    assert [e for e, _, _ in seen] == [0, 1, 2, 3]
    assert [lr for _, lr, _ in seen] == pytest.approx([0.05, 0.01, 0.01, 0.002])
    assert torch.allclose(got, torch.stack([p for _, _, p in seen]).mean(0))

    from hallnll.data import DeviceImages
    from hallnll.engine import ce_epoch
    from hallnll.models import build_model

    images = DeviceImages(digits.x_train, digits.mean, digits.std, "cpu")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.noise_seed)
        model = build_model(cfg.arch, C, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.noise_seed)
    total = torch.zeros(len(images), C)
    for epoch, lr in enumerate([0.05, 0.01, 0.01, 0.002]):
        for group in opt.param_groups:
            group["lr"] = lr
        ce_epoch(model, images, digits.y_train, opt, cfg.batch_size, gen, cfg.crop_padding, cfg.hflip)
        model.eval()  # their test() ran just before get_softmax_out
        with torch.no_grad():
            for idx, _ in images.iter_batches(cfg.eval_batch_size):  # their softmax_loader: training transform
                x = images.batch(idx, augment=True, padding=cfg.crop_padding, hflip=cfg.hflip, generator=gen)
                total[idx] += torch.softmax(model(x), dim=1)
        model.train()
    assert torch.allclose(got, total / 4, atol=1e-6)
    # and the augmented views are not the plain images
    plain = N.average_softmax(digits, cfg.replace(cbased_epochs=1, cbased_lr_milestones=[],
                                                  cbased_softmax_augmented=False), "cpu", progress=False)
    assert not torch.allclose(plain, seen[0][2], atol=1e-4)


def test_average_softmax_needs_an_epoch(digits, digits_cfg):
    # checked once, with the rest of the config (Config.validate), before any noise is made
    with pytest.raises(ConfigError, match="cbased_epochs"):
        digits_cfg.replace(cbased_epochs=0)
    with pytest.raises(ConfigError, match="cbased_epochs"):
        N.make_noisy_labels(Config(noise="classification", cbased_epochs=0), digits, progress=False)


# ---------------------------------------------------------------- report
def test_report_rows_sum_to_one_and_prints(digits):
    y = digits.y_train
    z = N.ptd(digits.x_train, y, C, 0.4, seed=1)
    rep = N.report(y, z, C, "ptd", 0.4, 1)
    assert torch.allclose(rep.transition.sum(1), torch.ones(C, dtype=torch.float64))
    assert int(rep.counts.sum()) == len(y)
    assert rep.actual_rate == pytest.approx(n_flipped(y, z) / len(y))
    text = str(rep)
    assert text == rep.summary()
    assert "ptd" in text and "40.00%" in text and f"{rep.actual_rate:.2%}" in text
    assert "clean\\noisy" in text and len(text.splitlines()) >= C + 5
    d = rep.to_dict()
    assert d["counts"][0][0] == int(rep.counts[0, 0])


def test_report_many_classes_cifar100n():
    z = np.load(shared_file("noisy-labels/cifar-n/CIFAR-100_human.npz"))
    clean, noisy = torch.from_numpy(z["clean_label"]), torch.from_numpy(z["noisy_label"])
    rep = N.report(clean, noisy, 100, "cifar-n", None, None)
    assert rep.actual_rate == pytest.approx(0.402, abs=1e-4)
    assert torch.allclose(rep.transition.sum(1), torch.ones(100, dtype=torch.float64))
    text = rep.summary()
    assert "per-class flip rate" in text and "n/a" in text and len(text.splitlines()) < 12


# ---------------------------------------------------------------- CSV
def test_csv_round_trip(tmp_path, digits):
    y = digits.y_train
    z = N.symmetric(y, C, 0.4, seed=1)
    out = tmp_path / "sub" / "labels.csv"
    N.save_label_csv(out, y, z)
    assert out.read_text().splitlines()[0] == "label,label_noisy"
    assert out.read_text().endswith("\n") and len(out.read_text().splitlines()) == len(y) + 1
    assert [p.name for p in out.parent.iterdir()] == ["labels.csv"]  # no temporary file left
    c2, z2 = N.load_label_csv(out, C, clean=y)
    assert torch.equal(c2, y) and torch.equal(z2, z)
    assert c2.dtype == z2.dtype == torch.int64


BAD_CSV = {
    "wrong header": ("clean,noisy\n1,2\n", "header"),
    "empty": ("", "header"),
    "no rows": ("label,label_noisy\n", "no rows"),
    "not integers": ("label,label_noisy\n1,2\n3,x\n", "row 2"),
    "one column": ("label,label_noisy\n1,2\n3\n", "row 2"),
    "label >= C": ("label,label_noisy\n1,2\n3,10\n", r"row 2 .*outside \[0, 10\)"),
    "negative": ("label,label_noisy\n-1,2\n", "outside"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_csv_raises(tmp_path, case):
    text, msg = BAD_CSV[case]
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(N.NoiseError, match=msg) as e:
        N.load_label_csv(p, num_classes=C)
    assert "bad.csv" in str(e.value)


def test_csv_against_the_dataset(tmp_path, digits):
    y = digits.y_train
    p = tmp_path / "short.csv"
    N.save_label_csv(p, y[:-5], y[:-5])
    with pytest.raises(N.NoiseError, match=rf"has {len(y) - 5} rows, the training set has {len(y)}"):
        N.load_label_csv(p, C, clean=y)
    p = tmp_path / "order.csv"
    N.save_label_csv(p, y.flip(0), y.flip(0))
    with pytest.raises(N.NoiseError, match="disagrees with the dataset's labels"):
        N.load_label_csv(p, C, clean=y)
    with pytest.raises(N.NoiseError, match="not found.*label,label_noisy"):
        N.load_label_csv(tmp_path / "missing.csv", C)


def test_save_csv_validates_before_writing(tmp_path):
    out = tmp_path / "x.csv"
    with pytest.raises(N.NoiseError, match="3 clean labels but 2"):
        N.save_label_csv(out, torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
    with pytest.raises(N.NoiseError, match="integer"):
        N.save_label_csv(out, torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(N.NoiseError, match="negative"):
        N.save_label_csv(out, torch.tensor([0, -1]), torch.tensor([0, 1]))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- make_noisy_labels
def test_make_noisy_labels_kinds(digits, tmp_path):
    y = digits.y_train
    cfg = Config(dataset="digits", noise="none", noise_seed=3, device="cpu").validate()
    z, rep = N.make_noisy_labels(cfg, digits)
    assert torch.equal(z, y) and rep.actual_rate == 0.0

    z, rep = N.make_noisy_labels(cfg.replace(noise="symmetric", noise_rate=0.3), digits)
    assert torch.equal(z, N.symmetric(y, C, 0.3, 3)) and rep.target_rate == 0.3 and rep.seed == 3
    assert z.device.type == "cpu"

    z, rep = N.make_noisy_labels(cfg.replace(noise="asymmetric", noise_rate=0.3), digits)
    assert torch.equal(z, N.asymmetric(y, C, 0.3, 3)) and "9->1" in rep.note

    z, rep = N.make_noisy_labels(cfg.replace(noise="ptd", noise_rate=0.2), digits)
    assert abs(rep.actual_rate - 0.2) < 0.05

    p = tmp_path / "labels.csv"
    N.save_label_csv(p, y, z)
    z2, rep2 = N.make_noisy_labels(cfg.replace(noise="file", noise_file=str(p)), digits)
    assert torch.equal(z2, z) and rep2.target_rate is None


def test_make_noisy_labels_refuses_labels_of_another_dataset(digits):
    # CIFAR-N labels do not belong to digits: refused by the clean check
    npz = shared_file("noisy-labels/cifar-n/CIFAR-10_human.npz")
    cfg = Config(dataset="digits", noise="cifar-n", cifar_n="worst", cifar_n_file=str(npz)).validate()
    with pytest.raises(DataError, match="50000 labels"):
        N.make_noisy_labels(cfg, digits)


def test_make_noisy_labels_refuses_bad_settings(digits):
    with pytest.raises(ConfigError, match="noise kind"):
        load_config(overrides=["noise=gaussian"])
    with pytest.raises(ConfigError, match="noise kind"):
        N.make_noisy_labels(Config(noise="gaussian"), digits)  # unvalidated Config: validated there
    for rate in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"\[0, 1\]"):
            N.make_noisy_labels(Config(noise="symmetric", noise_rate=rate), digits)
        with pytest.raises(N.NoiseError, match=r"\[0, 1\]"):
            N.symmetric(digits.y_train, C, rate, 0)
    with pytest.raises(ConfigError, match="noise_rate"):
        load_config(overrides=["noise_rate=1.5"])
    with pytest.raises(N.NoiseError, match="outside"):
        N.symmetric(digits.y_train, 5, 0.2, 0)  # digits labels reach 9


# ---------------------------------------------------------------- CLI
def test_cli_writes_labels_and_report(tmp_path, capsys, digits):
    out = tmp_path / "noisy.csv"
    rc = cli_main(["noise", "--set", "dataset=digits", "--set", "noise=symmetric", "--set", "noise_rate=0.2",
                "--set", "noise_seed=5", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"actual rate: {round(0.2 * 1347) / 1347:.2%}" in printed and "wrote" in printed
    clean, noisy = N.load_label_csv(out, C, clean=digits.y_train)
    assert torch.equal(noisy, N.symmetric(digits.y_train, C, 0.2, 5))


@pytest.mark.parametrize("sets", [
    ["noise=gaussian"],  # ConfigError: unknown kind
    ["noise_rate=1.5"],  # ConfigError: rate outside [0, 1]
    ["noies=ptd"],  # ConfigError: unknown key
    ["noise=file", "noise_file=/nonexistent/labels.csv"],  # NoiseError: missing file
    ["noise=cifar-n", "cifar_n_file=/nonexistent/CIFAR-10_human.npz"],  # DataError
    ["dataset=cifar10", "data_root=/nonexistent", "download=false"],  # DataError: no CIFAR
])
def test_cli_errors_write_nothing(tmp_path, capsys, sets):
    out = tmp_path / "noisy.csv"
    args = [a for s in sets for a in ("--set", s)] + ["--out", str(out), "--no-progress"]
    assert cli_main(["noise", *args]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert list(tmp_path.iterdir()) == []
    # an existing file is left as it was
    out.write_text("keep\n")
    assert cli_main(["noise", *args]) == 2
    assert out.read_text() == "keep\n" and list(tmp_path.iterdir()) == [out]


def test_cli_missing_params_file(tmp_path, capsys):
    assert cli_main(["noise", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o.csv")]) == 2
    assert "not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
