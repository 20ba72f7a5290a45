"""A run folder tells the truth: resuming checks the checkpoint first (settings,
readable file), wall_seconds counts the whole run, one thread setting for every
command, no noise-rate claim where there is no generated noise. Digits."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import hallnll.train as T
from hallnll import load_config
from hallnll.tools.cli import main as cli_main
from hallnll.train import CheckpointError, fit, prepare

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "params" / "digits-quick.yaml"
SHORT = ["epochs=5", "warmup_epochs=2", "lr_decay_epoch=4", "progress=false"]
# a first part that stops before the decay (lr_decay_epoch must lie below epochs); resuming with
# SHORT's decay at 4 is allowed because the epochs already run had the same learning rate
NO_DECAY = {"lr_decay_epoch": 0}


@pytest.fixture(scope="module")
def setting():
    cfg = load_config(DIGITS, SHORT)
    data, noisy, _ = prepare(cfg, progress=False)
    return cfg, data, noisy


@pytest.fixture(scope="module")
def first_part(setting, tmp_path_factory):
    """The first 3 epochs of SHORT (no decay yet), trained once; each test resumes a copy of the folder."""
    cfg, data, noisy = setting
    out = tmp_path_factory.mktemp("first3")
    return out, fit(cfg.replace(epochs=3, **NO_DECAY), out, data=data, noisy=noisy).summary


def test_resume_refuses_other_settings_before_anything_is_written(setting, first_part, tmp_path):
    cfg, data, noisy = setting
    tmp_path = tmp_path / "run"
    shutil.copytree(first_part[0], tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckpointError, match=r"other settings \(lr: 0.02 -> 0.05, p: 0.6 -> 0.5\).*--no-resume"):
        fit(cfg.replace(lr=0.05, p=0.5), tmp_path, data=data, noisy=noisy)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # labels that changed (e.g. an edited CSV) are refused as clearly
    other = noisy.clone()
    other[0] = (other[0] + 1) % 10
    with pytest.raises(CheckpointError, match="other labels"):
        fit(cfg, tmp_path, data=data, noisy=other)
    # a decay that would have changed an epoch already run (epoch 2 of 3) is another run
    with pytest.raises(CheckpointError, match=r"lr_decay_epoch: 0 -> 2"):
        fit(cfg.replace(lr_decay_epoch=2), tmp_path, data=data, noisy=noisy)
    # settings that cannot change results may differ: progress, checkpoint_every, a longer run
    # (with SHORT's decay at epoch 4, after the 3 epochs run)
    res = fit(cfg.replace(checkpoint_every=2, name="renamed"), tmp_path, data=data, noisy=noisy)
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4, 5] and res.summary["resumed_from_epoch"] == 3
    with pytest.raises(CheckpointError, match="already run 5 epochs"):
        fit(cfg.replace(epochs=4, **NO_DECAY), tmp_path, data=data, noisy=noisy)


def test_a_corrupt_checkpoint_is_one_clear_error_before_the_noise_is_rebuilt(setting, tmp_path, monkeypatch, capsys):
    cfg, data, noisy = setting
    out = tmp_path / "run"
    fit(cfg.replace(epochs=2, **NO_DECAY), out, data=data, noisy=noisy)
    ck = out / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:1000])  # cut short, as by a full disk
    calls = []
    real = T.prepare
    monkeypatch.setattr(T, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(CheckpointError, match=r"cannot resume from .*checkpoint.pt.*--no-resume"):
        fit(cfg, out)
    assert calls == []  # refused before the data and the noise were prepared
    rc = cli_main(["train", str(DIGITS), *sum([["--set", s] for s in SHORT], []), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1 and "checkpoint.pt" in err and "--no-resume" in err
    assert calls == []
    monkeypatch.undo()
    res = fit(cfg.replace(epochs=2, **NO_DECAY), out, data=data, noisy=noisy, resume=False)  # --no-resume starts over
    assert res.summary["resumed_from_epoch"] == 0 and len(res.history) == 2


def test_wall_seconds_counts_the_whole_run_after_a_resume(setting, first_part, tmp_path):
    cfg, data, noisy = setting
    tmp_path = tmp_path / "run"
    shutil.copytree(first_part[0], tmp_path)
    first = first_part[1]
    before = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["wall_seconds"]
    assert 0 < before <= first["wall_seconds"]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["resumed_from_epoch"] == 0 and s["wall_seconds_this_session"] == pytest.approx(s["wall_seconds"])
    second = fit(cfg, tmp_path, data=data, noisy=noisy).summary
    assert second["resumed_from_epoch"] == 3 and second["epochs"] == 5
    # the whole run = the first session up to its checkpoint + the resumed part, kept apart
    assert second["wall_seconds"] == pytest.approx(before + second["wall_seconds_this_session"])
    assert second["wall_seconds_this_session"] < second["wall_seconds"]


def test_one_thread_setting_for_every_command(tmp_path):
    """prepare (train and quickstart both call it) and fit run under cfg.threads and restore
    the caller's setting, so the regenerated noise does not depend on the caller's threads."""
    cfg = load_config(DIGITS, ["progress=false", "cbased_epochs=3"])
    assert cfg.threads == 1
    outer = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _, noisy_two_outside, _ = prepare(cfg, progress=False)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        _, noisy_one_outside, _ = prepare(cfg, progress=False)
        assert torch.equal(noisy_two_outside, noisy_one_outside)
        seen = []
        with T.cpu_threads(3):
            seen.append(torch.get_num_threads())
            with T.cpu_threads(0):  # 0 leaves the setting alone
                seen.append(torch.get_num_threads())
        assert seen == [3, 3] and torch.get_num_threads() == 1
        res = fit(load_config(DIGITS, SHORT + ["epochs=1", "warmup_epochs=1", "lr_decay_epoch=0", "threads=2"]), tmp_path)
        assert res.summary["torch_threads"] == 2 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(outer)


def test_noise_rate_only_where_noise_was_generated(setting, tmp_path):
    cfg, data, noisy = setting
    # generated noise (the digits default reads shipped labels; these are the ones its
    # classification settings made, so they are passed instead of being made again)
    s = fit(cfg.replace(noise="classification", epochs=1, warmup_epochs=1, **NO_DECAY), tmp_path / "gen",
            data=data, noisy=noisy).summary
    assert s["noise"] == "classification" and s["noise_rate"] == 0.4
    assert s["noise_rate_actual"] == pytest.approx(float((noisy != data.y_train).float().mean()))
    # labels from a file: their rate is measured against the clean labels, no target is claimed
    f = load_config(DIGITS, SHORT + ["epochs=1", "warmup_epochs=1", "lr_decay_epoch=0", "noise=file",
                                     f"noise_file={tmp_path / 'gen' / 'noisy_labels.csv'}"])
    s = fit(f, tmp_path / "file").summary
    assert "noise_rate" not in s and s["noise_rate_actual"] == pytest.approx(0.4, abs=0.005)
    assert "target rate: n/a" in (tmp_path / "file" / "noise_report.txt").read_text()


def test_settings_its_noise_kind_does_not_read_neither_refuse_a_resume_nor_redo_a_job(setting, tmp_path):
    from hallnll.tools import jobs

    cfg, data, noisy = setting
    cfg = cfg.replace(noise="classification")  # the default reads shipped labels: generated noise here
    # generated (classification) noise reads cbased_*: another value is another run
    fit(cfg.replace(epochs=1, warmup_epochs=1, **NO_DECAY), tmp_path / "gen", data=data, noisy=noisy)
    with pytest.raises(CheckpointError, match=r"cbased_epochs: 15 -> 7"):
        fit(cfg.replace(epochs=2, warmup_epochs=1, cbased_epochs=7, **NO_DECAY), tmp_path / "gen", data=data, noisy=noisy)
    # labels from a file do not read cbased_*, noise_rate or ptd_std (a changed default must not
    # refuse the resume or redo a finished job)
    f = cfg.replace(epochs=1, warmup_epochs=1, noise="file", noise_file=str(tmp_path / "gen" / "noisy_labels.csv"),
                    **NO_DECAY)
    fit(f, tmp_path / "file")
    other = {"cbased_epochs": 7, "noise_rate": 0.2, "ptd_std": 0.3}
    res = fit(f.replace(epochs=2, **other), tmp_path / "file")
    assert res.summary["resumed_from_epoch"] == 1 and len(res.history) == 2
    assert jobs.config_hash(f.replace(**other)) == jobs.config_hash(f)
    assert jobs.config_hash(cfg.replace(cbased_epochs=7)) != jobs.config_hash(cfg)


def test_a_checkpoint_from_before_a_setting_existed_resumes_only_with_its_old_value():
    # a config saved before hal_skip / hal_norm existed: its hallucinator was the old one
    saved = {k: v for k, v in load_config("digits-quick").to_dict().items() if k not in ("hal_skip", "hal_norm")}
    state = {"epoch": 1, "config": saved}
    with pytest.raises(CheckpointError, match="hal_skip: False -> True"):
        T.check_resumable(load_config("digits-quick"), state, "old.pt")
    T.check_resumable(load_config("digits-quick", ["hal_skip=false", "hal_norm=free"]), state, "old.pt")
