"""The settings declared once (hallnll.config): a frozen Config, each field's allowed values
beside it and checked whenever a Config is made, the speed levers as one group, the lists of
choices shared with the modules that use them; the label-issue settings both entry points
share; the tools' one table formatter. No training: well under a second."""
import dataclasses

import pytest

from hallnll import hallucination, levers, selection
from hallnll.config import (ARCHS, DATASETS, NOISE_KINDS, SPEED, VARIANTS, Config, ConfigError, from_dict,
                            load_config)
from hallnll.label_issues import issue_config
from hallnll.tools.text import table


def test_config_is_frozen_and_checked_when_made():
    cfg = load_config("digits-quick")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.p = 2
    # every way of making one goes through the same check, with a message that says what to do
    for make in (lambda: Config(p=2), lambda: cfg.replace(p=2), lambda: dataclasses.replace(cfg, p=2),
                 lambda: load_config("digits-quick", ["p=2"])):
        with pytest.raises(ConfigError, match=r"p=2\.0 must lie in \(0, 1\].*e\.g\. p=0\.4"):
            make()
    with pytest.raises(ConfigError, match=r"noise_rate=nan must lie in \[0, 1\]"):
        Config(noise_rate=float("nan"))
    with pytest.raises(ConfigError, match="should be of type float"):
        Config(lr="fast")
    assert cfg.replace(seed=5).seed == 5 and cfg.seed == 0


def test_allowed_values_are_declared_beside_the_fields_and_written_once():
    meta = {f.name: f.metadata for f in dataclasses.fields(Config)}
    assert meta["variant"]["choices"] is VARIANTS and meta["dataset"]["choices"] is DATASETS
    assert meta["noise"]["choices"] is NOISE_KINDS and meta["arch"]["choices"] is ARCHS
    # the modules that use a list own it; the config declares the same object
    assert meta["gmm_backend"]["choices"] is selection.GMM_BACKENDS
    assert meta["sgd_impl"]["choices"] is levers.SGD_IMPLS
    assert meta["compile_mode"]["choices"] is levers.COMPILE_MODES
    assert meta["hal_norm"]["choices"] is hallucination.HAL_NORMS
    for key, bad in (("gmm_backend", "cuml"), ("sgd_impl", "adam"), ("hal_norm", "unit"), ("variant", "mixup")):
        with pytest.raises(ConfigError, match=key):
            Config(**{key: bad})
    assert Config(clean_hard_weight=-1).clean_hard_weight == -1.0  # the declared extra value outside [0, 1]
    with pytest.raises(ConfigError, match="clean_hard_weight"):
        Config(clean_hard_weight=-0.5)


def test_speed_levers_are_one_group_under_their_old_flat_names_too():
    assert set(SPEED) == {"bf16", "channels_last", "cpu_bf16", "cudnn_benchmark", "gmm_backend", "hal_graph",
                          "sgd_impl", "compile", "compile_step", "compile_mode", "compile_backend"}
    a = load_config("digits-quick", ["speed.sgd_impl=fused", "speed.hal_graph=true"])
    b = load_config("digits-quick", ["sgd_impl=fused", "hal_graph=true"])
    c = from_dict({**load_config("digits-quick").to_dict(), "speed": {"sgd_impl": "fused", "hal_graph": True}})
    assert a == b == c and a.speed()["sgd_impl"] == "fused"
    assert set(a.to_dict()) == {f.name for f in dataclasses.fields(Config)}  # saved flat, as checkpoints hold it
    with pytest.raises(ConfigError, match="unknown key 'speed.warp'"):
        load_config("digits-quick", ["speed.warp=true"])


def test_issue_settings_are_the_same_for_the_folder_and_the_arrays():
    # a small set: the batch is halved until each of the 2 fold runs has 10 steps per epoch
    arrays = issue_config([], 300, None, "folder-cpu", image_size=8, dataset="arrays", noise="none")
    assert arrays.batch_size == 16 and arrays.image_size == 8
    folder = issue_config(["folder_train_csv=x.csv"], 300, 13, "folder-cpu")
    assert folder.batch_size == 16 and (folder.image_size, folder.crop_padding) == (12, 1)
    kept = issue_config(["folder_train_csv=x.csv", "batch_size=64", "image_size=16"], 300, 13, "folder-cpu")
    assert (kept.batch_size, kept.image_size) == (64, 16)


def test_one_table_formatter_for_text_and_markdown():
    rows = [["a", 1], ["bbb", 22]]
    assert table(rows, ["x", "y"]).splitlines() == ["x    y ", "---  --", "a    1 ", "bbb  22"]
    assert table(rows, ["x", "y"], fmt="markdown").splitlines()[:2] == ["| x   | y  |", "|-----|----|"]
    assert table([], ["x"]) == "x\n-"
    with pytest.raises(ValueError, match="markdown"):
        table(rows, ["x", "y"], fmt="html")
