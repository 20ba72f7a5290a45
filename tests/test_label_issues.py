"""The label-issue report of one's own folder (``hallnll fit-folder``) and of arrays
(``hallnll.find_label_issues``), on folders of digits written as PNG files here."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from hallnll.cli import folder_config
from hallnll.cli import main as cli_main
from hallnll.label_issues import fold_index, issues_from_probs

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
QUICK = ["epochs=8", "warmup_epochs=3", "lr_decay_epoch=6", "progress=false"]


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
    for s in QUICK:
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
    for r in rows:  # a suggestion differs from the given label exactly where an issue is flagged
        assert (r["is_label_issue"] == "True") == (r["suggested_label"] != r["given_label"])


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
    assert suggested_acc > given_acc + 0.1
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
    for s in QUICK:
        args += ["--set", s]
    assert cli_main(args) == 0
    assert (out / "label_issues.csv").read_text() == before
    # other settings: one clear error, nothing overwritten
    assert cli_main(args + ["--set", "lr=0.05"]) == 2
    err = capsys.readouterr().err
    assert "other settings (lr: 0.02 -> 0.05)" in err and "--no-resume" in err
    assert "lr: 0.02" in (out / "fold0" / "config.yaml").read_text()
    assert (out / "label_issues.csv").read_text() == before


def test_folder_config_sizes_to_the_data(tmp_path):
    truth = digits_folder(tmp_path, n_train=300, n_test=10)
    cfg = folder_config(tmp_path / "train.csv", None, None, [])
    assert cfg.arch == "small_cnn" and cfg.device == "cpu" and cfg.hflip  # the CPU profile here
    assert cfg.image_size == 8 and cfg.crop_padding == 1  # the images' own side, not upscaled to 16
    assert cfg.batch_size == 16 and cfg.name == tmp_path.name  # 150 images per run: the smallest batch
    cfg = folder_config(tmp_path / "train.csv", None, None, ["image_size=12", "batch_size=64", "name=x"])
    assert (cfg.image_size, cfg.crop_padding, cfg.batch_size, cfg.name) == (12, 1, 64, "x")
    assert len(truth) == 310


def test_rule_and_folds():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.3, 0.7]])
    given = np.array([0, 0, 1, 1])
    r = issues_from_probs(probs, given)
    # thresholds: class 0 -> mean(0.9, 0.2) = 0.55, class 1 -> mean(0.45, 0.7) = 0.575
    assert np.allclose(r["thresholds"], [0.55, 0.575])
    assert r["is_label_issue"].tolist() == [False, True, True, False]
    assert r["suggested"].tolist() == [0, 1, 0, 1] and np.allclose(r["label_quality"], [0.9, 0.2, 0.45, 0.7])
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
    with pytest.raises(hallnll.DataError, match="uint8"):
        hallnll.find_label_issues(x.astype(np.float32), noisy)
    with pytest.raises(hallnll.DataError, match="400 images but 399 labels"):
        hallnll.find_label_issues(x, noisy[:-1])
