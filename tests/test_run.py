"""hallnll.run.Run: the steps of Alg. 1 on digits, its state and the analysis built on it."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hallnll import engine, load_config
from hallnll.tools import analysis
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


@pytest.fixture(scope="module")
def three(setting, tmp_path_factory):
    """The run, trained once: its first 3 epochs (2 warm-up, 1 SSL), their metrics rows, the run's
    state, label report and checkpoint after them; then, uninterrupted, the rest of its epochs
    (``whole``: rows and label report). ``three.run()`` is a fresh Run continued from the state
    after 3 epochs (reading the report and saving change nothing of the run: they draw nothing)."""
    import copy

    cfg, data, noisy = setting
    run = Run(cfg, data, noisy)
    rows = [run.epoch() for _ in range(3)]
    state = copy.deepcopy(run.state_dict())
    anchors, report = run.last_anchors, run.label_report()
    checkpoint = tmp_path_factory.mktemp("three") / "ck.pt"
    run.save(checkpoint)
    while run.epochs_done < cfg.epochs:
        run.epoch()
    whole = SimpleNamespace(rows=_rows(run.history), report=run.label_report())
    return SimpleNamespace(rows=rows, anchors=anchors, state=state, report=report, checkpoint=checkpoint,
                           whole=whole, run=lambda: _loaded(Run(cfg, data, noisy), copy.deepcopy(state)))


def _loaded(run, state):
    run.load_state_dict(state)
    return run


def test_epoch_runs_the_steps_of_the_variant(setting, three):
    cfg, data, noisy = setting
    rows = three.rows
    assert [r["phase"] for r in rows] == ["warmup", "warmup", "ssl"] and three.state["epoch"] == 3
    # every training epoch ends with the BN re-estimation; the diagnostics are timed apart
    extra = {"bn_recal"} | ({"diagnostics"} if cfg.diagnostics else set())
    assert set(rows[0]["seconds"]) == {"warmup", "eval", "total"} | extra
    assert set(rows[2]["seconds"]) == {"easiness", "select_easy", "hallucinate", "select_hard", "ssl", "eval",
                                       "total"} | extra
    assert rows[2]["n_labeled"] == rows[2]["n_easy"] + rows[2]["n_clean_hard"] and three.anchors is not None
    easy = Run(cfg.replace(variant="easy"), data, noisy)
    for _ in range(3):
        row = easy.epoch()
    assert "hallucinate" not in row["seconds"] and row["n_clean_hard"] == 0 and easy.last_anchors is None


def test_state_dict_continues_the_run_exactly(setting, three):
    cfg, data, noisy = setting
    # three: the first 3 epochs, into the SSL epochs (generators and the hallucinator carry state)
    second = three.run()  # a fresh Run loaded with a copy of the state (its history list is appended to)
    while second.epochs_done < cfg.epochs:
        second.epoch()
    assert len(three.whole.rows) == cfg.epochs  # the same run, uninterrupted
    assert _rows(second.history) == three.whole.rows
    assert torch.equal(second.label_report()["corrected"], three.whole.report["corrected"])
    other = noisy.clone()
    other[0] = (other[0] + 1) % 10
    with pytest.raises(TrainingError, match="other noisy labels"):
        Run(cfg, data, other).load_state_dict(three.state)


def test_snapshot_and_sweep_use_the_run_steps(setting, three):
    cfg, data, noisy = setting
    run = three.run()
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


def _moved(state: dict, device) -> dict:
    """The state as torch.load(..., map_location=device) gives it: every tensor on ``device``."""
    def mv(v):
        if isinstance(v, torch.Tensor):
            return v.to(device)
        if isinstance(v, dict):
            return {k: mv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [mv(x) for x in v]
        return v
    return mv(state)


def test_a_loaded_run_keeps_its_last_selection_on_the_cpu(setting, three):
    cfg, data, noisy = setting
    want = three.report  # of the trained run after 3 epochs, saved then as three.checkpoint
    loaded = Run(cfg, data, noisy)
    loaded.load(three.checkpoint)
    assert loaded.last and all(v.device.type == "cpu" for v in loaded.last.values())
    got = loaded.label_report()
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the state's selection on the GPU, the report "
                                                          "mixing devices (seen on an H200)")
def test_label_report_after_loading_a_state_from_another_device(setting, tmp_path):
    """A checkpoint read with map_location=cuda put the last selection on the GPU and
    label_report failed with 'Expected all tensors to be on the same device'."""
    cfg, data, noisy = setting
    gpu_cfg = cfg.replace(device="cuda", bf16=False)
    run = Run(gpu_cfg, data, noisy)
    for _ in range(3):
        run.epoch()
    want = run.label_report()
    for target_cfg, state in ((gpu_cfg, _moved(run.state_dict(), "cuda")), (cfg, _moved(run.state_dict(), "cuda")),
                              (gpu_cfg, run.state_dict())):
        other = Run(target_cfg, data, noisy)
        other.load_state_dict(state)
        assert all(v.device.type == "cpu" for v in other.last.values())
        got = other.label_report()
        assert torch.equal(got["subset"], want["subset"]) and torch.equal(got["given"], want["given"])
    run.save(tmp_path / "ck.pt")
    again = Run(gpu_cfg, data, noisy)
    again.load(tmp_path / "ck.pt")
    assert torch.equal(again.label_report()["corrected"], want["corrected"])


def test_warmup_entropy_penalty_is_dividemix_neg_entropy_in_ssl_variants_only(setting):
    cfg, data, noisy = setting
    logits = 4 * torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits, dim=1)
    assert float(engine.neg_entropy(logits)) == pytest.approx(float(torch.mean(torch.sum(probs.log() * probs, dim=1))),
                                                               rel=1e-5)  # DivideMix's NegEntropy
    big = torch.tensor([[1000.0, 0.0, -1000.0]])  # probabilities that underflow to 0: 0, not NaN
    assert float(engine.neg_entropy(big)) == pytest.approx(0.0, abs=1e-6)

    def warmed(**changes):
        run = Run(cfg.replace(batch_size=32, **changes), data, noisy)  # 42 steps an epoch: a trained network
        rows = [run.epoch() for _ in range(2)]
        return run, rows

    def mean_entropy(run):
        return -float(engine.neg_entropy(run.easiness().logits))

    plain, rows0 = warmed(variant="gmm")
    pen, rows1 = warmed(variant="gmm", warmup_entropy_penalty=1.0)
    # the penalty keeps the warmed-up network's predictions on the training images spread out
    assert mean_entropy(pen) > mean_entropy(plain) + 0.2, (mean_entropy(pen), mean_entropy(plain))  # 2.11 vs 1.58
    assert rows1[0]["train_loss"] < rows0[0]["train_loss"]  # CE plus a negative term
    # variant ce is the cross-entropy baseline: the setting does not change it
    _, ce0 = warmed(variant="ce")
    _, ce1 = warmed(variant="ce", warmup_entropy_penalty=1.0)
    assert _rows(ce0) == _rows(ce1)
    with pytest.raises(Exception, match="warmup_entropy_penalty"):
        cfg.replace(warmup_entropy_penalty=-1.0)
