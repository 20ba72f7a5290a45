"""A user's own folder (``dataset=folder``): strict labels, clear errors, no hidden split.

Every test builds its own small folder of PNG/JPEG files in ``tmp_path``.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from hallnll.data import DataError, load_folder
from hallnll.data.sources import folder_classes


def write_folder(root, labels, name="train.csv", size=(10, 12), prefix="img", fmt="png"):
    """One small image per label (colour from the label's position), and a path,label CSV."""
    from PIL import Image

    rows = []
    for i, lab in enumerate(labels):
        rel = f"{prefix}/{i:03d}.{fmt}"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, ((37 * i) % 256, 0, 255 - (37 * i) % 256)).save(p)
        rows.append((rel, lab))
    with open(root / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return root / name


def test_labels_are_trimmed_and_every_image_is_kept_without_a_test_csv(tmp_path):
    csv_path = write_folder(tmp_path, ["cat", " cat", "dog ", "dog", "cat"])
    d = load_folder(csv_path, image_size=8)
    assert d.classes == ["cat", "dog"] and d.y_train.tolist() == [0, 0, 1, 1, 0]
    # no test CSV: no hidden split, all five images are trained on and keyed by their CSV path
    assert tuple(d.x_train.shape) == (5, 3, 8, 8) and len(d.y_test) == 0 and tuple(d.x_test.shape) == (0, 3, 8, 8)
    assert d.train_paths == [f"img/{i:03d}.png" for i in range(5)] and d.test_paths == []
    assert not d.train_labels_known


@pytest.mark.parametrize("labels, match", [
    (["cat", "Cat", "dog"], r"'Cat' and 'cat' differ only in case"),
    (["big cat", "big  cat", "dog"], r"differ only in case or spacing"),
    (["0", "1", "12"], r"2, 3, 4, .* never occur"),
    (["1", "2", "1"], r"0 never occur"),
    (["0", "-1", "1"], r"label -1 is negative"),
    (["0", "1", "01"], r"'01' and '1' are one integer"),
])
def test_ambiguous_labels_are_refused_listing_the_classes_found(tmp_path, labels, match):
    csv_path = write_folder(tmp_path, labels)
    with pytest.raises(DataError, match=match) as e:
        load_folder(csv_path, image_size=8)
    # one error that lists every class found with its row count
    for lab in set(l.strip() for l in labels):
        assert f"{lab!r} (" in str(e.value)


def test_folder_classes_rule():
    assert folder_classes(["2", "0", "1", "1"], "x") == ["0", "1", "2"]
    assert folder_classes(["b", "a", "a b"], "x") == ["a", "a b", "b"]
    assert folder_classes(["cat", "7up"], "x") == ["7up", "cat"]  # mixed: class names


def test_test_csv_must_use_training_classes(tmp_path):
    tr = write_folder(tmp_path, ["cat", "dog", "cat", "dog"])
    te = write_folder(tmp_path, ["dog", "cat", "bird"], name="test.csv", prefix="t")
    with pytest.raises(DataError, match=r"test.csv.* line 4: label 'bird' is not a class of the training CSV"):
        load_folder(tr, te, image_size=8)
    te = write_folder(tmp_path, ["dog", " cat"], name="test.csv", prefix="t")
    d = load_folder(tr, te, image_size=8)
    assert d.y_test.tolist() == [1, 0] and d.test_paths == ["t/000.png", "t/001.png"]
    # integer classes: a test label outside 0..C-1 is unknown; 01 is class 1
    tr = write_folder(tmp_path, ["0", "1", "1", "0"], name="itrain.csv", prefix="i")
    te = write_folder(tmp_path, ["01", "0"], name="itest.csv", prefix="j")
    assert load_folder(tr, te, image_size=8).y_test.tolist() == [1, 0]
    te = write_folder(tmp_path, ["1", "2"], name="itest.csv", prefix="j")
    with pytest.raises(DataError, match="'2' is not a class"):
        load_folder(tr, te, image_size=8)


def test_bad_files_get_one_clear_error_naming_them(tmp_path):
    csv_path = write_folder(tmp_path, ["a", "b", "a"], fmt="jpg")
    (tmp_path / "img" / "001.jpg").write_text("this is not an image\n")
    with pytest.raises(DataError, match=r"img/001.jpg.* is not a readable image"):
        load_folder(csv_path, image_size=8)
    # a truncated JPEG
    write_folder(tmp_path, ["a", "b", "a"], fmt="jpg")
    whole = (tmp_path / "img" / "002.jpg").read_bytes()
    (tmp_path / "img" / "002.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"img/002.jpg.* is not a readable image"):
        load_folder(csv_path, image_size=8)


def test_malformed_csvs(tmp_path):
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="has a header but no rows"):
        load_folder(tmp_path / "empty.csv")
    (tmp_path / "nohead.csv").write_text("a.png,cat\n")
    with pytest.raises(DataError, match="needs a header line with columns path,label"):
        load_folder(tmp_path / "nohead.csv")
    (tmp_path / "blank.csv").write_text("path,label\na.png,\n")
    with pytest.raises(DataError, match="line 2: empty label"):
        load_folder(tmp_path / "blank.csv")
    csv_path = write_folder(tmp_path, ["a", "b"])
    with open(csv_path, "a") as f:
        f.write("img/000.png,a\n")
    with pytest.raises(DataError, match=r"lists 'img/000.png' twice \(lines 2 and 4\)"):
        load_folder(csv_path)
    tr = write_folder(tmp_path, ["a", "b"], name="tr.csv", prefix="same")
    with pytest.raises(DataError, match="in both the training and the test CSV"):
        load_folder(tr, tr)


def test_folder_config_refuses_nothing_silently(tmp_path):
    from hallnll import ConfigError, load_config

    with pytest.raises(ConfigError, match="folder_train_csv"):
        load_config("folder")
    cfg = load_config("folder", [f"folder_train_csv={tmp_path / 'x.csv'}", "image_size=16"])
    assert cfg.crop_padding == 2 and cfg.hflip and cfg.device == "auto"  # natural-image defaults, padding = side / 8
