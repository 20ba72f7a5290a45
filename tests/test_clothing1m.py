"""Clothing1M as distributed (hallnll.data.clothing1m), the streamed image path
(hallnll.data.stream) and the validation-chosen epoch, on a small Clothing1M-shaped
tree the tests build: 14 classes, 420 JPEGs of 40-50 px, the official file names
and line formats, 30% symmetric noise on the training labels."""
import json
import shutil
import urllib.error

import numpy as np
import pytest
import torch

from hallnll.tools import cli
from hallnll.config import ConfigError, load_config
from hallnll.data import DataError
from hallnll.data.clothing1m import load_clothing1m, write_synthetic_tree
from hallnll.data.stream import ImagePaths, StreamImages, balanced_draw

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")

# a CPU-sized Clothing1M run: the shipped params file with a small CNN, 32 px crops of 36 px
TINY = ["nets=1", "image_size=32", "resize_size=36", "arch=small_cnn", "width=8", "pretrained=", "batch_size=16",
        "epoch_batches=4", "epochs=3", "lr_decay_epoch=0", "loader_workers=0", "bn_recal_images=32",
        "diagnostics=false", "progress=false", "eval_batch_size=128", "checkpoint_every=0"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("clothing1m")
    labels = write_synthetic_tree(root, n_train=280, n_val=70, n_test=70, side=40, noise_rate=0.3, seed=0)
    return root, labels


def test_layout_is_read_as_distributed(tree):
    root, labels = tree
    data = load_clothing1m(root, crop=32, resize=36)
    assert data.num_classes == 14 and data.classes[0] == "T-Shirt"
    assert data.streamed and len(data.x_train) == 280 and len(data.x_val) == 70 and len(data.x_test) == 70
    assert data.y_train.tolist() == labels["noisy"].tolist()  # the noisy labels, in the key list's order
    assert 0.2 < float((data.y_train.numpy() != labels["true"]).mean()) < 0.4  # the tree's 30% noise
    assert not data.train_labels_known and data.train_paths[0].startswith("images/")
    keys = (root / "clean_test_key_list.txt").read_text().split()
    clean = dict(line.split() for line in (root / "clean_label_kv.txt").read_text().splitlines())
    assert data.y_test.tolist() == [int(clean[k]) for k in keys]
    assert data.x_val.shape == (70, 3, 32, 32)


def _broken(tree, tmp_path, how):
    root = tmp_path / "c1m"
    shutil.copytree(tree[0], root)
    if how == "missing list":
        (root / "clean_val_key_list.txt").unlink()
    elif how == "malformed line":
        lines = (root / "noisy_label_kv.txt").read_text().splitlines()
        lines[4] = lines[4].replace(" ", "\t3 ")  # three fields
        (root / "noisy_label_kv.txt").write_text("\n".join(lines) + "\n")
    elif how == "no image":
        key = (root / "clean_test_key_list.txt").read_text().split()[6]
        (root / key).unlink()
    elif how == "label 14":
        lines = (root / "clean_label_kv.txt").read_text().splitlines()
        lines[9] = lines[9].rsplit(" ", 1)[0] + " 14"
        (root / "clean_label_kv.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("how, says", [
    ("missing list", "clean_val_key_list.txt is missing under"),
    ("malformed line", "noisy_label_kv.txt' line 5: expected 'images/.../NAME.jpg LABEL'"),
    ("no image", "clean_test_key_list.txt' line 7: key 'images/"),
    ("label 14", "clean_label_kv.txt' line 10: label 14 is outside 0..13"),
])
def test_bad_tree_gives_one_error_and_writes_nothing(tree, tmp_path, capsys, how, says):
    root = _broken(tree, tmp_path, how)
    out = tmp_path / "run"
    rc = cli.main(["train", "clothing1m", "--set", f"data_root={root}", *sum([["--set", s] for s in TINY], []),
                   "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: clothing1m: ") and says in err[0], err
    if how == "no image":
        assert "has no image" in err[0]
    assert not out.exists()


def test_streamed_batches_do_not_depend_on_workers_and_match_the_transforms(tree):
    from PIL import Image
    from torchvision import transforms as T

    data = load_clothing1m(tree[0], crop=32, resize=36)
    batches = [torch.arange(16 * i, 16 * i + 16) for i in range(3)]
    a = StreamImages(data.x_train, data.mean, data.std, "cpu", workers=1, seed=5)
    b = StreamImages(data.x_train, data.mean, data.std, "cpu", workers=0, seed=5)
    a.plan(batches, train=True, views=2)  # decoded ahead by a worker process
    b.plan(batches, train=True, views=2)  # decoded in this process
    for idx in batches:
        got = [a.augmented(idx, None), a.augmented(idx, None)]
        want = [b.augmented(idx, None), b.augmented(idx, None)]
        assert all(torch.equal(g, w) for g, w in zip(got, want))
        assert not torch.equal(got[0], got[1])  # two independent views of one decode
    # evaluation: DivideMix's transform_test (Resize(36), CenterCrop(32), Normalize) on PIL, up to decoding/resampling
    ref = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor(), T.Normalize(data.mean, data.std)])
    _, x = next(iter(a.iter_batches(8)))
    want = torch.stack([ref(Image.open(data.x_train.path(i)).convert("RGB")) for i in range(8)])
    assert x.shape == (8, 3, 32, 32) and float((x - want).abs().mean()) < 0.05


def test_one_pool_of_workers_serves_every_split_and_a_pass_taken_over_ends_in_this_process(tree):
    """A draw (subset) and the test split share the training set's pool: one worker process, forked
    once. A pass that a later one takes over hands out the rest of its batches decoded here: the
    same pixels as without workers."""
    import multiprocessing

    from hallnll.data.stream import DecodePool

    data = load_clothing1m(tree[0], crop=32, resize=36)
    pool = DecodePool(workers=1)
    a = StreamImages(data.x_train, data.mean, data.std, "cpu", seed=5, pool=pool)
    t = StreamImages(data.x_test, data.mean, data.std, "cpu", seed=6, pool=pool)
    b = StreamImages(data.x_train, data.mean, data.std, "cpu", workers=0, seed=5)
    batches = [torch.arange(8 * i, 8 * i + 8) for i in range(3)]
    a.plan(batches, train=True)
    b.plan(batches, train=True)
    first = a.batch(batches[0], augment=True)
    pids = {c.pid for c in multiprocessing.active_children()}
    test = [x for _, x in t.iter_batches(16)]  # takes the workers over
    sub = a.subset(torch.arange(40, 72), seed=7)
    assert sub.pool is pool and len([x for _, x in sub.iter_batches(16)]) == 2
    rest = [a.batch(i, augment=True) for i in batches[1:]]  # the rest of a's pass, decoded here
    assert all(torch.equal(g, b.batch(i, augment=True)) for g, i in zip([first] + rest, batches))
    want = [x for _, x in StreamImages(data.x_test, data.mean, data.std, "cpu", workers=0, seed=6).iter_batches(16)]
    assert all(torch.equal(g, w) for g, w in zip(test, want)) and len(test) == len(want)
    assert len(pids) == 1 and {c.pid for c in multiprocessing.active_children()} == pids


def test_jpeg_bytes_decoded_by_decode_jpeg_match_the_workers_and_pil(tree, tmp_path):
    # jpeg_decode: the device's decoder (nvJPEG) is chosen on CUDA only; on the CPU the bytes path
    # (workers read the files, torchvision.io.decode_jpeg decodes the batch) is testable as it is
    from PIL import Image
    from torchvision import transforms as T

    from hallnll.data.stream import decode, decode_batch, device_images, jpeg_decoder

    assert [jpeg_decoder("auto", d) for d in ("cpu", torch.device("cuda"), "cuda:1")] == ["workers", "device", "device"]
    assert jpeg_decoder("workers", "cuda") == "workers" and jpeg_decoder("device", "cpu") == "device"
    data = load_clothing1m(tree[0], crop=32, resize=36)
    cfg = load_config("clothing1m", TINY)
    assert cfg.jpeg_decode == "auto" and device_images(data.x_test, data.mean, data.std, "cpu", False, cfg).decoder == "workers"
    with pytest.raises(ConfigError, match="jpeg_decode"):
        load_config("clothing1m", TINY + ["jpeg_decode=gpu"])
    # levels of 255: mean 0 / std 1/255 leaves the pixels as they are
    a = StreamImages(data.x_train, (0, 0, 0), (1 / 255,) * 3, "cpu", workers=1, seed=5, decoder="device")
    b = StreamImages(data.x_train, (0, 0, 0), (1 / 255,) * 3, "cpu", workers=0, seed=5)
    batches = [torch.arange(16 * i, 16 * i + 16) for i in range(2)]
    a.plan(batches, train=True, views=2)
    b.plan(batches, train=True, views=2)
    for idx in batches:  # the same crops and flips; on the CPU the same library decodes: identical pixels
        assert all(torch.equal(a.augmented(idx, None), b.augmented(idx, None)) for _ in range(2))
    idx = torch.tensor([3, 1, 4])  # a request that was not planned: decoded in this process, the same way
    assert torch.equal(a.batch(idx), b.batch(idx))
    # evaluation against DivideMix's transform_test on PIL: within 1 level of 255 (resampling rounding)
    _, x = next(iter(a.iter_batches(32)))
    ref = T.Compose([T.Resize(36), T.CenterCrop(32), T.PILToTensor()])
    want = torch.stack([ref(Image.open(data.x_train.path(i)).convert("RGB")) for i in range(32)]).float()
    assert float((x - want).abs().max()) <= 1.0 and float((x - want).abs().mean()) < 0.05
    # a file that is not a JPEG (a user's PNG) is decoded on the CPU beside the batch's JPEGs
    from torchvision.io import read_file

    png = tmp_path / "x.png"
    Image.open(data.x_train.path(0)).convert("RGB").save(png)
    paths = [str(png), data.x_train.path(1)]
    got = decode_batch([read_file(p) for p in paths], "cpu", 32, 36, "dividemix", True, 2, seed=7)
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(got, torch.stack([decode(p, 32, 36, "dividemix", True, 2, gen) for p in paths], 1))


def test_balanced_draw_is_dividemix_sampling():
    rng_labels = np.random.default_rng(0)
    labels = rng_labels.choice(14, 5000, p=np.r_[np.full(13, 0.075), 0.025])  # class 13 rarer than its quota
    n = 1400
    got = balanced_draw(labels, n, 14, np.random.default_rng(3))
    # dataloader_clothing1M.py, mode 'all', on the same shuffle
    perm = np.random.default_rng(3).permutation(len(labels))
    count, want = np.zeros(14), []
    for i in perm:
        if count[labels[i]] < n / 14 and len(want) < n:
            want.append(i)
            count[labels[i]] += 1
    assert sorted(got.tolist()) == sorted(want)
    assert np.bincount(labels[got], minlength=14)[:13].tolist() == [100] * 13


def test_clothing1m_run_reports_the_validation_chosen_epoch(tree, tmp_path):
    out = tmp_path / "run"
    rc = cli.main(["train", "clothing1m", "--set", f"data_root={tree[0]}", *sum([["--set", s] for s in TINY], []),
                   "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "ssl", "ssl"]
    assert [r["n_drawn"] for r in rows] == [128, 64, 64]  # 2 x 4 x 16 in the warm-up, 4 x 16 after
    assert all(r["n_labeled"] + r["n_unlabeled"] == 64 for r in rows[1:])  # the selection is made on the draw
    best = max(range(3), key=lambda i: (rows[i]["val_acc"], -i))
    assert summary["best_val_epoch"] == rows[best]["epoch"] and summary["best_val_acc"] == rows[best]["val_acc"]
    assert summary["test_acc_at_best_val"] == rows[best]["test_acc"]
    assert summary["best_val_acc"] > 1 / 14 + 0.1  # it learns the class colours through 30% noise
    assert len((out / "labels.csv").read_text().splitlines()) == 281  # every training image reported


def test_a_large_folder_is_streamed(tree, tmp_path):
    root = tree[0]
    keys = (root / "noisy_train_key_list.txt").read_text().split()[:96]
    noisy = dict(line.split() for line in (root / "noisy_label_kv.txt").read_text().splitlines())
    csv = tmp_path / "train.csv"
    csv.write_text("path,label\n" + "".join(f"{root / k},{noisy[k]}\n" for k in keys))
    cfg = load_config("digits-quick", overrides=["dataset=folder", f"folder_train_csv={csv}", "image_size=16",
                                                 "noise=none", "stream_above_gb=0", "epochs=2", "warmup_epochs=1",
                                                 "lr_decay_epoch=0", "batch_size=16", "loader_workers=0",
                                                 "bn_recal_images=32", "progress=false", "hflip=true",
                                                 "crop_padding=2", "label_folds=0"])
    from hallnll.train import fit, prepare

    data, _, _ = prepare(cfg)
    assert data.streamed and isinstance(data.x_train, ImagePaths) and data.x_train.mode == "square"
    res = fit(cfg, out_dir=tmp_path / "run")
    assert [r["phase"] for r in res.history] == ["warmup", "ssl"] and res.labels["given"].shape == (96,)


def test_pretrained_weights_by_file_and_by_name_offline(tmp_path, monkeypatch):
    import torchvision

    from hallnll.models import build_model

    net = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        net.conv1.weight.fill_(0.25)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    model = build_model("resnet50", 14, pretrained=str(tmp_path / "w.pth"))
    assert float(model.backbone.conv1.weight.detach().mean()) == 0.25

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=r"put that file at '.*hub/checkpoints/resnet50-0676ba61\.pth'"):
        build_model("resnet50", 14, pretrained="IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="neither a file nor a torchvision weights name"):
        build_model("resnet50", 14, pretrained=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("variant", ["hallnll", "dividemix"])
def test_two_co_trained_networks_run_and_write_their_outputs(tree, tmp_path, variant):
    out = tmp_path / variant
    sets = [s for s in TINY if not s.startswith(("epochs=", "epoch_batches="))]
    rc = cli.main(["train", "clothing1m", "--set", f"data_root={tree[0]}", *sum([["--set", s] for s in sets], []),
                   "--set", "nets=2", "--set", f"variant={variant}", "--set", "epochs=2", "--set", "epoch_batches=2",
                   "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "ssl"]
    ssl_row = rows[1]
    for k in ("train_loss", "train_loss_2", "n_labeled", "n_labeled_2"):
        assert k in ssl_row  # both networks trained, each on a division of the 32 drawn images
    assert ssl_row["n_labeled"] + ssl_row["n_unlabeled"] == ssl_row["n_labeled_2"] + ssl_row["n_unlabeled_2"] == 32
    assert ("hal_loss_2" in ssl_row) == (variant == "hallnll")  # one hallucinator per network; none for DivideMix
    summary = json.loads((out / "summary.json").read_text())
    assert summary["variant"] == variant and summary["best_val_epoch"] in (1, 2)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert len(state["peers"]) == 1 and set(state["peers"][0]) == {"model", "opt", "hal", "hal_opt"}


def test_dividemix_needs_two_networks(capsys, tmp_path):
    rc = cli.main(["train", "digits-quick", "--set", "variant=dividemix", "--out", str(tmp_path / "r")])
    assert rc == 2 and "set nets=2" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_streamed_clothing1m_runs_under_torchrun_with_two_ranks(tree, tmp_path):
    # torchrun --standalone --nproc_per_node 2 (gloo): each rank's workers decode its part of every
    # global batch and its shard of every global step; rank 0 writes (the checks: tests/ddp_stream_check.py)
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(root / "tests" / "ddp_stream_check.py"), str(tree[0]), str(out)]
    p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "ddp_stream_check: shards 140+140 of 280" in p.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["best_val_epoch"] in (1, 2) and "test_acc_at_best_val" in summary
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "ssl"] and (out / "labels.csv").is_file()
