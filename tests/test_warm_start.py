"""A run started from another variant's warm-up checkpoint (``fit(..., warm_start=)``)
is the run trained from scratch, epoch for epoch; anything else is refused first."""
from __future__ import annotations

import json
import re

import pytest

from hallnll import load_config
from hallnll.train import CheckpointError, fit

BASE = ["epochs=5", "warmup_epochs=3", "lr_decay_epoch=4", "progress=false", "checkpoint_every=1"]


def _rows(history) -> list:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.fixture(scope="module")
def warmup(tmp_path_factory):
    """The warm-up of variant gmm alone: 3 epochs, no lr decay yet (the digits default's labels)."""
    out = tmp_path_factory.mktemp("warm")
    fit(load_config("digits-quick", BASE + ["variant=gmm", "epochs=3", "lr_decay_epoch=0"]), out)
    return out / "checkpoint.pt"


@pytest.mark.parametrize("sets", [["variant=hallnll", "hal_skip=false", "hal_norm=free", "hal_hidden=64"],
                                  ["variant=ce", "diagnostics=false"]], ids=["hallnll-own-hallucinator", "ce"])
def test_a_warm_started_run_is_the_run_from_scratch(warmup, tmp_path, sets):
    """ce also runs without the diagnostics, which training never reads: from the warm-up made
    with them, its warm-up rows keep the checkpoint's diagnostic columns, every other number is
    the run's from scratch (docs/choices.md#diagnostics)."""
    cfg = load_config("digits-quick", BASE + sets)
    scratch = fit(cfg, tmp_path / "scratch")
    warm = fit(cfg, tmp_path / "warm", warm_start=warmup)
    assert warm.summary["warm_start"] == {"checkpoint": str(warmup), "epoch": 3}
    saved = [json.loads(x) for x in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    diagnostic = [] if cfg.diagnostics else ["test_acc_batch_bn", "test_acc_running_bn"]
    for rows in (_rows(warm.history), _rows(saved)):
        assert len(rows) == len(scratch.history) == 5
        assert [sorted(set(w) - set(s)) for w, s in zip(rows, _rows(scratch.history))] == [diagnostic] * 3 + [[]] * 2
        assert [{k: w[k] for k in s} for w, s in zip(rows, _rows(scratch.history))] == _rows(scratch.history)
    assert [r["phase"] for r in warm.history][:3] == (["ce"] * 3 if "variant=ce" in sets else ["warmup"] * 3)


def test_a_warm_start_that_is_not_this_runs_warm_up_is_refused_before_anything_is_written(warmup, tmp_path):
    cases = {"lr=0.05": "other settings that the warm-up reads (lr",
             "warmup_epochs=2": "not all warm-up epochs of this run",
             "lr_decay_epoch=2": "lr_decay_epoch (within the warm-up)"}
    for s, msg in cases.items():
        with pytest.raises(CheckpointError, match=re.escape(msg)):
            fit(load_config("digits-quick", BASE + [s]), tmp_path / "x", warm_start=warmup)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        fit(load_config("digits-quick", BASE), tmp_path / "x", warm_start=tmp_path / "none.pt")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
