"""The label-issue report of one's own folder (``hallnll fit-folder``) and of arrays
(``hallnll.find_label_issues``), on folders of digits written as PNG files here."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from hallnll.tools.cli import folder_config
from hallnll.tools.cli import main as cli_main
from hallnll.label_issues import calibrated_joint, fold_index, prune_by_noise_rate

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# the digits CNN (the CPU profile's ResNet is for photos), a few epochs
QUICK = ["arch=small_cnn", "width=0", "epochs=8", "warmup_epochs=3", "lr_decay_epoch=6", "progress=false"]
FIXTURE = ["suggest_confidence=0.6"]  # 8 epochs leave the digits CNN below the default 0.9 on most images


def digits_folder(root, n_train=600, n_test=200, rate=0.3, seed=0):
    """scikit-learn's digits as PNG files, train.csv with ``rate`` of the labels flipped
    (class names), a clean test.csv; returns the true label of each training path."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * 255 / 16).astype(np.uint8)
    rng = np.random.default_rng(seed)
    y = d.target
    noisy = y.copy()
    flip = rng.random(len(y)) < rate
    noisy[flip] = (y[flip] + rng.integers(1, 10, int(flip.sum()))) % 10
    truth = {}
    for split, idx, labels in (("train", range(n_train), noisy), ("test", range(n_train, n_train + n_test), y)):
        (root / split).mkdir(parents=True, exist_ok=True)
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            for i in idx:
                rel = f"{split}/{i:04d}.png"
                Image.fromarray(x[i]).save(root / rel)
                w.writerow([rel, NAMES[labels[i]]])
                truth[rel] = NAMES[y[i]]
    return truth


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mydata")
    truth = digits_folder(root)
    out = root / "run"
    args = ["fit-folder", str(root / "train.csv"), "--test", str(root / "test.csv"), "--out", str(out)]
    for s in QUICK + FIXTURE:
        args += ["--set", s]
    assert cli_main(args) == 0
    return root, out, truth


def test_one_row_per_image_of_the_csvs_keyed_by_path(folder_run):
    root, out, truth = folder_run
    rows = read_rows(out / "label_issues.csv")
    assert list(rows[0]) == ["path", "split", "given_label", "suggested_label", "is_label_issue", "label_quality",
                             "subset"]
    train, test = read_rows(root / "train.csv"), read_rows(root / "test.csv")
    assert [(r["path"], r["split"], r["given_label"]) for r in rows] == \
        [(r["path"], "train", r["label"]) for r in train] + [(r["path"], "test", r["label"]) for r in test]
    assert {r["suggested_label"] for r in rows} <= set(NAMES)
    assert all(0.0 <= float(r["label_quality"]) <= 1.0 for r in rows)
    assert {r["subset"] for r in rows if r["split"] == "train"} <= {"easy", "clean-hard", "unlabeled"}
    assert {r["subset"] for r in rows if r["split"] == "test"} == {"test"}
    for r in rows:  # a label is only changed where an issue is flagged
        assert r["suggested_label"] == r["given_label"] or r["is_label_issue"] == "True"


def test_the_report_finds_the_wrong_labels_and_improves_them(folder_run):
    _, out, truth = folder_run
    rows = [r for r in read_rows(out / "label_issues.csv") if r["split"] == "train"]
    wrong = np.array([r["given_label"] != truth[r["path"]] for r in rows])
    flag = np.array([r["is_label_issue"] == "True" for r in rows])
    precision, recall = (flag & wrong).sum() / flag.sum(), (flag & wrong).sum() / wrong.sum()
    given_acc = np.mean([r["given_label"] == truth[r["path"]] for r in rows])
    suggested_acc = np.mean([r["suggested_label"] == truth[r["path"]] for r in rows])
    assert 0.25 < wrong.mean() < 0.35
    assert precision > 0.6 and recall > 0.5, (precision, recall)  # chance: precision = the noise rate
    assert suggested_acc > given_acc + 0.05
    # label_quality ranks the wrong labels first
    q = np.array([float(r["label_quality"]) for r in rows])
    assert q[wrong].mean() < q[~wrong].mean() - 0.3


def test_the_run_folder_tells_the_truth(folder_run):
    root, out, _ = folder_run
    s = json.loads((out / "summary.json").read_text())
    assert s["name"] == root.name and s["dataset"] == "folder" and s["noise"] == "none"
    assert s["n_train"] == 600 and s["n_test"] == 200 and s["label_folds"] == 2
    assert s["test_acc"] > 0.8 and "noise_rate" not in s and "scores" not in s
    trained = []
    for fold in ("fold0", "fold1"):
        run = json.loads((out / fold / "summary.json").read_text())
        assert "noise_rate" not in run and "noise_rate_actual" not in run  # the labels are the user's
        assert run["dataset"] == "folder" and run["noise"] == "none" and run["device"] == "cpu"
        assert "unknown" in (out / fold / "noise_report.txt").read_text()
        labels = read_rows(out / fold / "labels.csv")  # the run's own selection, joinable by path
        assert abs(len(labels) - 300) <= 5 and labels[0]["path"].startswith("train/")
        trained.append({r["path"] for r in labels})
    assert not trained[0] & trained[1] and len(trained[0] | trained[1]) == 600  # two halves
    cfg = (out / "config.yaml").read_text()
    assert "hflip: true" in cfg and "device: cpu" in cfg and "crop_padding: 1" in cfg  # 8 px images: 8 / 8


def test_a_finished_report_is_resumed_not_recomputed(folder_run, capsys):
    root, out, _ = folder_run
    before = (out / "label_issues.csv").read_text()
    args = ["fit-folder", str(root / "train.csv"), "--test", str(root / "test.csv"), "--out", str(out)]
    for s in QUICK + FIXTURE:
        args += ["--set", s]
    assert cli_main(args) == 0
    assert (out / "label_issues.csv").read_text() == before
    # other settings: one clear error, nothing overwritten
    assert cli_main(args + ["--set", "lr=0.05"]) == 2
    err = capsys.readouterr().err
    assert "other settings (lr: 0.02 -> 0.05)" in err and "--no-resume" in err
    assert "lr: 0.02" in (out / "fold0" / "config.yaml").read_text()
    assert (out / "label_issues.csv").read_text() == before


def test_folder_config_sizes_to_the_data(tmp_path, monkeypatch):
    truth = digits_folder(tmp_path, n_train=300, n_test=10)
    cfg = folder_config(tmp_path / "train.csv", None, None, [])
    assert (cfg.arch, cfg.width, cfg.device, cfg.hflip) == ("preact_resnet18", 16, "cpu", True)  # the CPU profile
    from hallnll.label_issues import cpu_has_amx

    assert cfg.cpu_bf16 == cpu_has_amx()
    # oneDNN capped below AMX (the AVX2 kernels): bf16 would be emulated, so it is not chosen
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_has_amx()
    assert not folder_config(tmp_path / "train.csv", None, None, []).cpu_bf16
    monkeypatch.undo()
    assert cfg.image_size == 8 and cfg.crop_padding == 1  # the images' own side, not upscaled to 16
    assert cfg.batch_size == 16 and cfg.name == tmp_path.name  # 150 images per run: the smallest batch
    cfg = folder_config(tmp_path / "train.csv", None, None, ["image_size=12", "batch_size=64", "name=x"])
    assert (cfg.image_size, cfg.crop_padding, cfg.batch_size, cfg.name) == (12, 1, 64, "x")
    assert len(truth) == 310


def test_rule_and_folds():
    probs = np.array([[0.9, 0.1], [0.05, 0.95], [0.95, 0.05], [0.3, 0.7], [0.8, 0.2], [0.35, 0.65]])
    given = np.array([0, 0, 1, 1, 0, 1])
    # thresholds: class 0 -> mean(0.9, 0.05, 0.8) = 0.583, class 1 -> mean(0.05, 0.7, 0.65) = 0.467;
    # confident joint (given -> confident class): 0->0 twice, 0->1 once, 1->0 once, 1->1 twice
    joint = calibrated_joint(probs, given)
    assert np.allclose(joint, [[2, 1], [1, 2]])
    r = prune_by_noise_rate(probs, given, suggest_confidence=0.9)
    # one issue per off-diagonal count, the largest margin p_j - p_i in its given class
    assert r["is_label_issue"].tolist() == [False, True, True, False, False, False]
    assert r["suggested"].tolist() == [0, 1, 0, 1, 0, 1] and np.allclose(r["label_quality"], probs[range(6), given])
    r = prune_by_noise_rate(probs, given, suggest_confidence=0.96)  # not confident enough to change a label
    assert r["is_label_issue"].sum() == 2 and r["suggested"].tolist() == given.tolist()
    from cleanlab.filter import find_label_issues  # noqa: the same issues as cleanlab's default filter

    assert find_label_issues(given, probs).tolist() == prune_by_noise_rate(probs, given)["is_label_issue"].tolist()
    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 3)
    f = fold_index(y, 2, seed=0)
    for c in range(3):  # stratified: each fold holds half of every class
        assert abs(int((f[y == c] == 0).sum()) - int((f[y == c] == 1).sum())) <= 1
    assert torch.equal(f, fold_index(y, 2, seed=0)) and not torch.equal(f, fold_index(y, 2, seed=1))


def test_find_label_issues_on_arrays():
    import hallnll
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images[:400] * 255 / 16).astype(np.uint8)  # [N, 8, 8] grey
    y = d.target[:400].copy()
    rng = np.random.default_rng(1)
    flip = rng.random(len(y)) < 0.25
    noisy = y.copy()
    noisy[flip] = (y[flip] + 1 + rng.integers(0, 9, int(flip.sum()))) % 10
    df = hallnll.find_label_issues(x, noisy, classes=NAMES, test_images=x[:20], test_labels=y[:20],
                                   overrides=QUICK, batch_size=16)
    assert list(df.columns) == ["index", "split", "given_label", "suggested_label", "is_label_issue",
                                "label_quality", "subset"]
    assert len(df) == 420 and (df["split"] == "train").sum() == 400
    tr = df[df["split"] == "train"]
    assert tr["index"].tolist() == list(range(400)) and tr["given_label"].tolist() == [NAMES[i] for i in noisy]
    assert tr["is_label_issue"].dtype == bool and tr["label_quality"].between(0, 1).all()
    flagged = tr["is_label_issue"].to_numpy()
    assert (flagged & flip).sum() > 0.5 * flagged.sum()  # far above chance (25%)
    truth = np.array([NAMES[i] for i in y])
    assert (tr["suggested_label"].to_numpy() == truth).mean() >= (tr["given_label"].to_numpy() == truth).mean()
    with pytest.raises(hallnll.DataError, match="uint8"):
        hallnll.find_label_issues(x.astype(np.float32), noisy)
    with pytest.raises(hallnll.DataError, match="400 images but 399 labels"):
        hallnll.find_label_issues(x, noisy[:-1])


def test_the_benchmark_scores_both_methods_on_a_tiny_cifar_folder(tmp_path):
    """benchmarks/label_issues.py end to end at toy size (its numbers are meaningless here)."""
    pytest.importorskip("cleanlab", reason="the benchmark compares with cleanlab (pip install -e '.[dev]')")
    import sys
    from pathlib import Path

    from conftest import CIFAR_N_DIR, CIFAR_JPEG, shared_file

    shared_file("cifar10-jpeg/train.npz")
    shared_file("noisy-labels/cifar-n/CIFAR-10_human.npz")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import label_issues as bench

    out = tmp_path / "bench"
    sets = ["epochs=2", "warmup_epochs=1", "lr_decay_epoch=0", "width=4"]
    assert bench.main(["--jpeg-dir", str(CIFAR_JPEG), "--cifar-n", str(CIFAR_N_DIR / "CIFAR-10_human.npz"),
                       "--labels", "worse_label", "--n-train", "120", "--n-test", "40", "--cleanlab-folds", "2",
                       "--out", str(out), *sum([["--set", s] for s in sets], [])]) == 0
    res = json.loads((out / "results.json").read_text())
    human = np.load(CIFAR_N_DIR / "CIFAR-10_human.npz")
    wrong = (human["worse_label"][:120] != human["clean_label"][:120]).mean()
    for method in ("hallnll", "cleanlab"):
        assert res[method]["n"] == 120 and res[method]["noise_rate"] == pytest.approx(wrong)
        assert 0 <= res[method]["precision"] <= 1 and 0 <= res[method]["recall"] <= 1
    assert res["setting"]["labels"] == "CIFAR-10N worse_label"
    rows = read_rows(out / "folder" / "labels.csv")
    assert len(rows) == 120 and rows[0]["path"] == "train/00000.jpg"
    md = (out / "results.md").read_text()
    assert "| hallnll fit-folder (2-fold) |" in md and "| cleanlab find_label_issues (2-fold CE) |" in md


def test_a_damaged_run_checkpoint_is_refused_before_the_images_are_read(tmp_path, monkeypatch, capsys):
    import hallnll.train as T

    digits_folder(tmp_path, n_train=60, n_test=10)
    out = tmp_path / "run"
    (out / "fold1").mkdir(parents=True)
    (out / "fold1" / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    calls = []
    monkeypatch.setattr(T, "prepare", lambda *a, **k: calls.append(1))
    rc = cli_main(["fit-folder", str(tmp_path / "train.csv"), "--out", str(out)] + sum([["--set", s] for s in QUICK], []))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1 and "fold1/checkpoint.pt" in err and "--no-resume" in err
    assert calls == [] and sorted(p.name for p in out.iterdir()) == ["fold1"]


def test_issues_from_probs_on_a_models_out_of_sample_probabilities():
    """One's own model (logistic regression, 3-fold out-of-sample probabilities) on digits with 25%
    of the labels flipped: the same rule and columns as the method's report, the input checked."""
    import hallnll
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    d = load_digits()
    x, y = d.data[:600] / 16.0, d.target[:600]
    rng = np.random.default_rng(2)
    flip = rng.random(len(y)) < 0.25
    noisy = y.copy()
    noisy[flip] = (y[flip] + 1 + rng.integers(0, 9, int(flip.sum()))) % 10
    probs = cross_val_predict(LogisticRegression(max_iter=300), x, noisy, cv=3, method="predict_proba")
    df = hallnll.issues_from_probs(noisy, probs, classes=NAMES, suggest_confidence=0.6)
    assert list(df.columns) == ["given_label", "suggested_label", "is_label_issue", "label_quality"] and len(df) == 600
    assert df["given_label"].tolist() == [NAMES[i] for i in noisy]
    flagged = df["is_label_issue"].to_numpy()
    assert flagged.tolist() == prune_by_noise_rate(probs, noisy)["is_label_issue"].tolist()
    assert (flagged & flip).sum() > 0.7 * flagged.sum() and (flagged & flip).sum() > 0.5 * flip.sum()
    assert np.allclose(df["label_quality"], probs[np.arange(600), noisy])
    truth = np.array([NAMES[i] for i in y])
    assert (df["suggested_label"].to_numpy() == truth).mean() > (df["given_label"].to_numpy() == truth).mean()
    for bad, match in ((probs[:, :1], "shape"), (np.log(probs + 1e-9), "summing to 1"),
                       (probs[:-1], "one label per row")):
        with pytest.raises(hallnll.DataError, match=match):
            hallnll.issues_from_probs(noisy, bad)
    with pytest.raises(hallnll.DataError, match="0..9"):
        hallnll.issues_from_probs(noisy + 1, probs)
    with pytest.raises(hallnll.DataError, match="one name per column"):
        hallnll.issues_from_probs(noisy, probs, classes=NAMES[:9])
