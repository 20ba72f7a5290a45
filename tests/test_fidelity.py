"""Fidelity of the SSL stage: BatchNorm statistics that describe the weights,
the per-epoch diagnostics, and the ``hallnll fidelity`` grid."""
import json

import pytest
import torch

from hallnll import load_config
from hallnll.tools import fidelity
from hallnll.data import DeviceImages
from hallnll.engine import accuracy, accuracy_batch_stats, recalibrate_bn
from hallnll.models import build_model
from hallnll.train import fit, prepare


@pytest.fixture(scope="module")
def digits_clean():
    cfg = load_config("digits-quick", ["noise=none", "progress=false"])
    data, noisy, _ = prepare(cfg, progress=False)
    return cfg, data, noisy


def test_eval_mode_accuracy_follows_the_weights_after_short_ssl_epochs(digits_clean):
    # digits at batch 128: 8 SSL steps per epoch. With the running averages the
    # eval-mode accuracy fell to 57.6% at epoch 11 while the same weights scored
    # 98.2% with batch statistics (bn_recal_images=0); re-estimated after every
    # epoch, the two agree.
    cfg, data, noisy = digits_clean
    cfg = cfg.replace(variant="gmm", batch_size=128, epochs=13, warmup_epochs=10, lr_decay_epoch=0, checkpoint_every=0)
    hist = fit(cfg, data=data, noisy=noisy).history
    for row in hist[10:]:
        assert row["phase"] == "ssl"
        assert abs(row["test_acc"] - row["test_acc_batch_bn"]) <= 0.03, row
        assert row["test_acc"] > 0.9, row
    # the diagnostics show what the running averages alone would have given
    assert "test_acc_running_bn" in hist[10] and "unlabeled_pred_acc" in hist[10]


def test_recalibrate_bn_replaces_stale_statistics_and_batch_stats_accuracy_leaves_them(digits_clean):
    cfg, data, noisy = digits_clean
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1)
    x = DeviceImages(data.x_train, data.mean, data.std, "cpu")
    xt = DeviceImages(data.x_test, data.mean, data.std, "cpu")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    from hallnll.engine import ce_epoch

    for _ in range(4):
        ce_epoch(model, x, data.y_train, opt, 64, g, padding=1, hflip=False)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:  # stale statistics: as if from other weights
        m.running_mean.add_(1.0)
        m.running_var.mul_(4.0)
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    stale = float(accuracy(model, xt, data.y_test))
    batch = float(accuracy_batch_stats(model, xt, data.y_test, 450))
    for m, (mu, var) in zip(bns, before):  # the diagnostic changed nothing
        assert torch.equal(m.running_mean, mu) and torch.equal(m.running_var, var)
        assert m.momentum == 0.1
    recalibrate_bn(model, x, 1347, 64, torch.Generator().manual_seed(1), padding=1, hflip=False)
    fresh = float(accuracy(model, xt, data.y_test))
    assert stale < batch - 0.2, (stale, batch)
    assert abs(fresh - batch) < 0.03, (fresh, batch)
    for m in bns:
        assert m.momentum == 0.1  # restored


def test_recalibration_can_be_switched_off_and_leaves_the_training_stream_alone(digits_clean):
    # the re-estimation draws from its own generator: the warm-up losses (which
    # never see eval-mode statistics) are the same with and without it
    cfg, data, noisy = digits_clean
    cfg = cfg.replace(variant="ce", epochs=3, warmup_epochs=3, lr_decay_epoch=0, checkpoint_every=0)
    on = fit(cfg, data=data, noisy=noisy).history
    off = fit(cfg.replace(bn_recal_images=0), data=data, noisy=noisy).history
    assert [r["train_loss"] for r in on] == [r["train_loss"] for r in off]
    assert "test_acc_running_bn" in on[0] and "test_acc_running_bn" not in off[0]


def _hist(accs, phase="ssl"):
    return [{"epoch": i + 1, "phase": phase, "test_acc": a} for i, a in enumerate(accs)]


def test_checks_encode_the_papers_expectations():
    cells = {
        ("clean", "ce"): fidelity.Cell("clean", "ce", [_hist([0.5, 0.60], "ce")]),
        ("clean", "gmm"): fidelity.Cell("clean", "gmm", [_hist([0.5, 0.62])]),
        ("clean", "easy"): fidelity.Cell("clean", "easy", [_hist([0.5, 0.58])]),
        ("noisy", "ce"): fidelity.Cell("noisy", "ce", [_hist([0.5, 0.40], "ce"), _hist([0.5, 0.42], "ce")]),
        ("noisy", "gmm"): fidelity.Cell("noisy", "gmm", [_hist([0.5, 0.50]), _hist([0.5, 0.52])]),
        ("noisy", "easy"): fidelity.Cell("noisy", "easy", [_hist([0.5, 0.515]), _hist([0.5, 0.525])]),
        ("noisy", "hallnll"): fidelity.Cell("noisy", "hallnll", [_hist([0.5, 0.56]), _hist([0.5, 0.57])]),
    }
    for h, v in zip(cells[("noisy", "hallnll")].seeds, (0.70, 0.80)):  # the anchors' geometry of the last epoch
        h[-1].update(hal_cos_u=0.9, hal_cos_v=v, hal_nearest_distinct=100)
    text, report = fidelity.format_report(cells, "header", tol=0.005)
    assert "| noisy  | hallnll | 0.900    | 0.750    | -" in text and "| 100 " in text
    assert report["summaries"][-1]["hal_cos_v"] == pytest.approx(0.75)
    got = {c["check"]: c["holds"] for c in report["checks"]}
    assert got["clean: gmm ends at or above ce (tolerance 0.5 points)"] is True
    assert got["clean: easy ends at or above ce (tolerance 0.5 points)"] is False
    assert got["noisy: ce < gmm"] is True
    # 52.0 vs 51.0 mean is +1.0 but the seed spread is 1.41: not a margin
    assert got["noisy: gmm < easy"] is False
    assert got["noisy: easy <= hallnll"] is True
    assert "| 2     | ssl" in text and "noisy/hallnll" in text
    assert report["summaries"][0]["last"] == pytest.approx(0.60)


def test_reference_tables_are_read_and_checked_against_ce_and_gmm(tmp_path):
    # two tables of benchmarks/dividemix_reference.py (accuracy in %), one unrelated JSON file
    def table(name, labels, nets, accs):
        rows = [{"epoch": i + 1, "test_acc": a} for i, a in enumerate(accs)]
        (tmp_path / name).write_text(json.dumps({"args": {"labels": labels, "nets": nets, "epochs": 2}, "rows": rows}))

    table("clean-0.json", "clean", 0, [50.0, 61.0])
    table("clean-1.json", "clean", 1, [50.0, 66.0])
    (tmp_path / "fidelity.json").write_text(json.dumps({"summaries": []}))
    ref = fidelity.read_reference(tmp_path)
    assert set(ref) == {("clean", 0), ("clean", 1)}
    assert ref[("clean", 1)]["per_epoch"] == [0.5, 0.66]
    cells = {("clean", "ce"): fidelity.Cell("clean", "ce", [_hist([0.5, 0.60], "ce")]),
             ("clean", "gmm"): fidelity.Cell("clean", "gmm", [_hist([0.5, 0.62])])}
    text, report = fidelity.format_report(cells, "", tol=0.005, reference=ref, ref_tol=0.02)
    got = {c["check"]: (c["holds"], c["detail"]) for c in report["reference_checks"]}
    ce = got["clean: ce at or above DivideMix's own loop, cross-entropy (tolerance 2.0 points)"]
    gmm = got["clean: gmm at or above DivideMix's own loop, one network (tolerance 2.0 points)"]
    assert ce[0] is True and "60.00 vs 61.00" in ce[1]  # 1 point below: within the tolerance
    assert gmm[0] is False and "62.00 vs 66.00" in gmm[1]  # 4 points below: a fault
    assert "| clean  | one network   | 1     | 2/2    | 66.00  | 66.00  | -         | -              | clean-1.json |" in text
    # a grid cut short in its warm-up: gmm has no MixMatch epoch to compare yet, ce has
    short = {("clean", "ce"): fidelity.Cell("clean", "ce", [_hist([0.5], "ce")], planned=2),
             ("clean", "gmm"): fidelity.Cell("clean", "gmm", [[{"epoch": 1, "phase": "warmup", "test_acc": 0.5}]],
                                             planned=2)}
    _, rep = fidelity.format_report(short, "", reference=ref)
    assert [c["check"].split(" at or")[0] for c in rep["reference_checks"]] == ["clean: ce"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "other.json").write_text("[1, 2]")
    with pytest.raises(fidelity.ConfigError, match="no JSON table"):
        fidelity.read_reference(empty)
    with pytest.raises(fidelity.ConfigError, match="not a folder"):
        fidelity.read_reference(tmp_path / "missing")


def test_dividemix_cell_runs_in_the_grid_and_is_checked_for_agreement_with_the_two_network_loop(tmp_path):
    # the grid's dividemix cell (two networks) on digits, 1 warm-up + 1 MixMatch epoch
    sets = ["epochs=2", "warmup_epochs=1", "lr_decay_epoch=0", "checkpoint_every=0", "noise=none"]
    job, = fidelity.plan("digits-quick", sets, tmp_path, variants=("dividemix",), labels=("clean",))
    assert job.config().nets == 2 and job.config().variant == "dividemix"
    ref = tmp_path / "ref"
    ref.mkdir()

    def table(name, nets, seed, accs, labeled=None):
        rows = [{"epoch": i + 1, "test_acc": a} for i, a in enumerate(accs)]
        if labeled:
            rows[-1].update(labeled=labeled[0], labeled_precision=labeled[1])
        args = {"labels": "clean", "nets": nets, "epochs": len(accs), "seed": seed}
        (ref / name).write_text(json.dumps({"args": args, "rows": rows}))

    table("clean-2-seed0.json", 2, 0, [50.0, 70.0], (900, 0.98))
    table("clean-2-seed1.json", 2, 1, [50.0, 74.0], (1000, 0.96))
    r = fidelity.read_reference(ref)[("clean", 2)]  # the two tables of one loop are its seeds
    assert r["seeds"] == 2 and r["per_epoch"] == pytest.approx([0.5, 0.72]) and r["last_std"] == pytest.approx(0.0283, abs=1e-4)
    assert r["labeled"] == 950 and r["labeled_precision"] == pytest.approx(0.97)
    rep = fidelity.run("digits-quick", sets, tmp_path, variants=("dividemix",), labels=("clean",), reference=ref,
                       log=lambda *a: None)
    assert not rep["failed"]
    (s,) = rep["summaries"]
    assert (s["variant"], s["epochs"], s["phases"]) == ("dividemix", 2, ["warmup", "ssl"]) and s["n_labeled"] > 0
    (check,) = rep["reference_checks"]
    assert check["check"].startswith("clean: dividemix agrees with DivideMix's own loop, two networks")
    ours = s["last"]
    assert check["holds"] is (abs(ours - 0.72) <= 0.0283) and "seed spread 2.83" in check["detail"]
    text = (tmp_path / "fidelity.md").read_text()
    assert "| clean  | two networks (DivideMix) | 2     | 2/2    | 72.00 ± 2.83 | 72.00 ± 2.83 | 950 " in text
    # the agreement check itself, on made-up cells: within the spread holds, outside it does not
    for accs, holds in (([0.5, 0.71], [0.5, 0.74]), True), (([0.5, 0.60], [0.5, 0.62]), False):
        cells = {("clean", "dividemix"): fidelity.Cell("clean", "dividemix", [_hist(accs[0]), _hist(accs[1])])}
        _, rep = fidelity.format_report(cells, "", reference=fidelity.read_reference(ref))
        assert [c["holds"] for c in rep["reference_checks"]] == [holds]


def test_a_grid_cut_short_is_compared_at_the_epoch_both_cells_reached():
    # ce finished 3 epochs, gmm only 2 (warm-up + one SSL epoch), easy only its warm-up
    cells = {
        ("clean", "ce"): fidelity.Cell("clean", "ce", [_hist([0.5, 0.60, 0.70], "ce")], planned=3),
        ("clean", "gmm"): fidelity.Cell("clean", "gmm", [[{"epoch": 1, "phase": "warmup", "test_acc": 0.5},
                                                          {"epoch": 2, "phase": "ssl", "test_acc": 0.58}]], planned=3),
        ("clean", "easy"): fidelity.Cell("clean", "easy", [[{"epoch": 1, "phase": "warmup", "test_acc": 0.5}]],
                                         planned=3),
    }
    text, report = fidelity.format_report(cells, "", tol=0.005)
    (check,) = report["checks"]  # easy has nothing of its own yet: no check
    assert check["check"].startswith("clean: gmm") and check["holds"] is False
    assert "58.00 vs 60.00" in check["detail"] and "epoch 2, partial: 3 planned" in check["detail"]
    assert "| clean  | gmm     | 1     | 2/3 " in text


def test_fidelity_grid_runs_resumes_and_reports(tmp_path):
    # the grid on digits (its own classification noise), two epochs per cell on 512 of its images
    sets = ["epochs=2", "warmup_epochs=1", "lr_decay_epoch=0", "checkpoint_every=0", "train_subset=512"]
    rep = fidelity.run("digits-quick", sets, tmp_path, variants=("ce", "gmm"), labels=("clean", "noisy"),
                       log=lambda *a: None)
    assert not rep["failed"]
    assert {(s["labels"], s["variant"]) for s in rep["summaries"]} == {("clean", "ce"), ("clean", "gmm"),
                                                                      ("noisy", "ce"), ("noisy", "gmm")}
    saved = json.loads((tmp_path / "fidelity.json").read_text())
    assert saved["checks"] == rep["checks"]
    cfg = load_config(tmp_path / "clean" / "gmm" / "seed0" / "config.yaml")
    assert cfg.noise == "none" and cfg.variant == "gmm"
    # a finished grid is skipped, not re-run
    logs = []
    fidelity.run("digits-quick", sets, tmp_path, variants=("ce", "gmm"), labels=("clean", "noisy"), log=logs.append)
    assert sum("skip" in str(m) for m in logs) == 4
    with pytest.raises(Exception, match="unknown 'sgd'"):
        fidelity.run("digits-quick", sets, tmp_path, variants=("sgd",), log=lambda *a: None)
    # the command line's --report-only --reference: the grid as it is, beside a reference table
    ref = tmp_path / "ref"
    ref.mkdir()
    rows = [{"epoch": 1, "test_acc": 10.0}, {"epoch": 2, "test_acc": 100.0}]  # no real run reaches 100%
    (ref / "clean-1.json").write_text(json.dumps({"args": {"labels": "clean", "nets": 1, "epochs": 2}, "rows": rows}))
    argv = ["fidelity", "--params", "digits-quick", "--out", str(tmp_path), "--variants", "ce,gmm", "--report-only",
            "--reference", str(ref)] + [a for kv in sets for a in ("--set", kv)]
    from hallnll.tools.cli import main as cli_main

    assert cli_main(argv) == 0
    saved = json.loads((tmp_path / "fidelity.json").read_text())
    (check,) = saved["reference_checks"]
    assert check["check"].startswith("clean: gmm at or above DivideMix's own loop") and check["holds"] is False
    assert saved["checks"] == rep["checks"]  # nothing re-run


# A small clean CIFAR-10 subset (the JPEG q75 copy beside the repository):
# 1,000 / 1,000 images, PreActResNet-18 of width 8, batch 128, 8 warm-up epochs
# then 2 of MixMatch, against cross-entropy for all 10 epochs from the same start.
CIFAR_SMALL = ["dataset=cifar10", "noise=none", "arch=preact_resnet18", "width=8", "train_subset=1000",
               "test_subset=1000", "epochs=10", "warmup_epochs=8", "lr_decay_epoch=0", "batch_size=128",
               "crop_padding=4", "hflip=true", "eval_batch_size=500", "checkpoint_every=0", "progress=false",
               "device=cpu", "bf16=false", "cpu_bf16=false", "download=false"]


def sampling_tolerance(acc: float, n_test: int) -> float:
    """Two standard errors of the difference of two test accuracies near ``acc`` on ``n_test``
    images: how far two equally good networks' accuracies lie apart by the test draw alone."""
    return 2 * (2 * acc * (1 - acc) / n_test) ** 0.5


def test_ssl_stage_stays_with_cross_entropy_on_clean_cifar(cifar10, tmp_path):
    # On clean labels the SSL stage has nothing to correct: it must stay with cross-entropy,
    # up to the test draw (two standard errors of a difference of two accuracies on the
    # 1,000 test images: about 4 points at 30%). A broken SSL stage falls far below: with the
    # labeled targets shifted by one class (ssl.labeled_targets rolled) gmm scored 19.3% and
    # 7.9% against ce's 30.5% and 30.9% (AMD EPYC, one thread, 2026-12-02); the intact one
    # 29.6% and 30.9%. The accuracy order of the paper needs the paper's scale (docs/fidelity.md
    # measures it with seeds); the stale-BatchNorm failure of short SSL epochs is tested on
    # digits above, where it is 40 points (1-2 points here).
    # An earlier version (2,000 images, 4 SSL epochs, 1 point of tolerance) failed on an
    # AMD EPYC with AVX-512 (gmm 36.87% against ce 38.10%): a tolerance under one standard
    # error is float drift between CPUs, not a test.
    cfg = load_config("fidelity-cifar10", CIFAR_SMALL)
    data, noisy, _ = prepare(cfg, data=cifar10, progress=False)
    assert len(noisy) == 1000 and bool((noisy == data.y_train).all())
    # the 8 warm-up epochs are trained once: ce's first 8 epochs, then gmm continues from their
    # checkpoint (warm_start: the run from scratch, epoch for epoch, tests/test_warm_start.py) and
    # ce resumes its own (resume: the uninterrupted run, tests/test_golden.py). ce runs without the
    # diagnostics (two extra test passes per epoch, a third of its time), which only gmm's SSL
    # epochs need below (training never reads them: tests/test_warm_start.py)
    ce_cfg = cfg.replace(variant="ce", diagnostics=False)
    fit(ce_cfg.replace(epochs=8), tmp_path, data=data, noisy=noisy)
    gmm = fit(cfg.replace(variant="gmm"), data=data, noisy=noisy, warm_start=tmp_path / "checkpoint.pt").history
    ce = fit(ce_cfg, tmp_path, data=data, noisy=noisy).history
    assert len(ce) == len(gmm) == 10 and ce[7]["test_acc"] == gmm[7]["test_acc"]  # the same warm-up
    assert [r["phase"] for r in gmm[8:]] == ["ssl"] * 2
    mean_ce = sum(r["test_acc"] for r in ce[8:]) / 2
    mean_gmm = sum(r["test_acc"] for r in gmm[8:]) / 2
    tol = sampling_tolerance(mean_ce, len(data.y_test))
    assert mean_gmm >= mean_ce - tol, ([r["test_acc"] for r in gmm[8:]], [r["test_acc"] for r in ce[8:]], tol)
    for r in gmm[8:]:  # eval mode is not broken: re-estimated statistics near the batch statistics' accuracy
        assert abs(r["test_acc"] - r["test_acc_batch_bn"]) < 0.05, r


def test_dividemix_reference_runs_on_the_fidelity_subset(cifar10_root, tmp_path):
    """benchmarks/dividemix_reference.py (DivideMix's loop, the gmm / ce yardstick):
    two networks co-divide on clean labels, so every labeled sample's label is
    right and the table has one row per epoch."""
    import importlib.util
    from pathlib import Path

    from conftest import shared_file

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "dividemix_reference.py"
    spec = importlib.util.spec_from_file_location("dividemix_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    labels = shared_file("noisy-labels/cifar10-classification-idn/dependent0.4.csv")
    out = tmp_path / "dm.json"
    # fp32, as docs/fidelity.md's CPU comparisons run it (without AMX / AVX-512-BF16 bf16 is
    # emulated: 25 s instead of 12 s under the AVX2 kernels, 2026-12-02)
    rc = mod.main(["--data-root", str(cifar10_root), "--noise-file", str(labels), "--labels", "clean", "--nets", "2",
                   "--set", "train_subset=300", "--set", "test_subset=200", "--set", "width=4", "--epochs", "2",
                   "--warm-up", "1", "--decay", "1", "--fp32", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "labeled" not in rows[0]  # warm-up
    assert 0 < rows[1]["labeled"] <= 300 and rows[1]["labeled_precision"] == 1.0
    assert all(0.0 <= r["test_acc"] <= 100.0 for r in rows)


def test_tables_1_3_4_hold_dividemix_beside_ours_with_the_same_data_and_schedule():
    from hallnll.tools import reproduce

    paper = {"table1": [93.33, 95.07], "table3": [95.16, 95.23, 95.21, 92.56, 71.13], "table4": [74.40]}
    for name, means in paper.items():
        for scale in ("paper", "quick"):
            plans = {p.cell.key: p for p in reproduce.plan_table(name, scale, "/nonexistent-runs")}
            dmx = [p for k, p in plans.items() if k.startswith("dividemix-")]
            assert [p.cell.paper_mean for p in dmx] == means
            for p in dmx:
                ours = plans[p.cell.key[len("dividemix-"):]]
                assert (p.config["variant"], p.config["nets"], ours.config["variant"]) == ("dividemix", 2, "hallnll")
                differ = {k for k in p.config if p.config[k] != ours.config[k]}
                assert differ <= {"variant", "nets"} and p.run_root != ours.run_root, (name, scale, differ)
    rows = reproduce.collect(reproduce.plan_table("table1", "paper", "/nonexistent-runs"), [0])
    md = reproduce.format_markdown("table1", rows, "paper")
    assert "| PTD 20% | - | 0 | 94.26 ± 0.19 | - |" in md and "| DivideMix: PTD 20% | - | 0 | 93.33 ± 0.14 | - |" in md
    assert [r["method"] for r in rows] == ["Ours", "Ours", "DivideMix", "DivideMix"]


def test_warmup_batch_size_sets_the_warmup_steps_alone(digits_clean):
    # DivideMix's schedule: the warm-up batch twice the MixMatch batch (batch_size=64 warmup_batch_size=128)
    from hallnll.run import Run

    cfg, data, noisy = digits_clean
    steps = {}
    for wb in (0, 128):
        run = Run(cfg.replace(batch_size=64, warmup_batch_size=wb, bn_recal_images=0), data, noisy)
        n = [0]
        run.opt.register_step_post_hook(lambda *a: n.__setitem__(0, n[0] + 1))
        run.warmup_epoch()
        steps[wb] = n[0]
    assert steps == {0: len(noisy) // 64, 128: len(noisy) // 128}
