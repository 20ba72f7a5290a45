"""hallnll.run.Run: the steps of Alg. 1 on digits, its state and the analysis built on it."""
from __future__ import annotations

import pytest
import torch

from hallnll import analysis, load_config
from hallnll.run import Run, TrainingError
from hallnll.train import prepare

SCHEDULE = ["epochs=5", "warmup_epochs=2", "lr_decay_epoch=4", "batch_size=128", "noise=symmetric",
            "noise_rate=0.4", "progress=false"]


@pytest.fixture(scope="module")
def setting():
    cfg = load_config("params/digits-quick.yaml", SCHEDULE)
    data, noisy, _ = prepare(cfg, progress=False)
    return cfg, data, noisy


def _rows(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_epoch_runs_the_steps_of_the_variant(setting):
    cfg, data, noisy = setting
    run = Run(cfg, data, noisy)
    rows = [run.epoch() for _ in range(3)]
    assert [r["phase"] for r in rows] == ["warmup", "warmup", "ssl"] and run.epochs_done == 3
    assert set(rows[0]["seconds"]) == {"warmup", "eval", "total"}
    assert set(rows[2]["seconds"]) == {"easiness", "select_easy", "hallucinate", "select_hard", "ssl", "eval", "total"}
    assert rows[2]["n_labeled"] == rows[2]["n_easy"] + rows[2]["n_clean_hard"] and run.last_anchors is not None
    easy = Run(cfg.replace(variant="easy"), data, noisy)
    for _ in range(3):
        row = easy.epoch()
    assert "hallucinate" not in row["seconds"] and row["n_clean_hard"] == 0 and easy.last_anchors is None


def test_state_dict_continues_the_run_exactly(setting):
    cfg, data, noisy = setting
    whole = Run(cfg, data, noisy)
    for _ in range(cfg.epochs):
        whole.epoch()
    first = Run(cfg, data, noisy)
    for _ in range(3):  # into the SSL epochs: generators and the hallucinator carry state
        first.epoch()
    second = Run(cfg, data, noisy)
    second.load_state_dict(first.state_dict())
    while second.epochs_done < cfg.epochs:
        second.epoch()
    assert _rows(second.history) == _rows(whole.history)
    assert torch.equal(second.label_report()["corrected"], whole.label_report()["corrected"])
    other = noisy.clone()
    other[0] = (other[0] + 1) % 10
    with pytest.raises(TrainingError, match="other noisy labels"):
        Run(cfg, data, other).load_state_dict(first.state_dict())


def test_snapshot_and_sweep_use_the_run_steps(setting):
    cfg, data, noisy = setting
    run = Run(cfg, data, noisy)
    for _ in range(3):
        run.epoch()
    snap = analysis.selection_snapshot(run)
    assert snap.feats.shape == (len(noisy), run.model.feature_dim)
    assert len(snap.anchors["anchors"]) == len(snap.hal.anchors) and snap.true is not None
    sweep = analysis.hard_selection_sweep(snap, [cfg.lambda_conf, 0.99])
    at_cfg = sweep.iloc[0]
    assert at_cfg["clean-hard"] == int(snap.clean_hard_mask.sum())
    assert at_cfg["changed"] == int((snap.train_labels != snap.given)[snap.clean_hard_mask].sum())
    assert sweep.iloc[1]["clean-hard"] <= at_cfg["clean-hard"]  # a stricter threshold keeps fewer
    gmm = snap.easiness.gmm  # the GMM the easiness step fitted, for the plots
    assert gmm.means[gmm.clean] < gmm.means[1 - gmm.clean]
    assert torch.equal(gmm.omega(), snap.easiness.omega.cpu())
    with pytest.raises(ValueError, match="hallnll"):
        analysis.selection_snapshot(Run(cfg.replace(variant="gmm"), data, noisy))
