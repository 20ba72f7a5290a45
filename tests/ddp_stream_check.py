"""Run by tests/test_clothing1m.py under ``torchrun --standalone --nproc_per_node 2`` (gloo): the
streamed path (a Clothing1M tree, one DataLoader worker per rank) under DDP, then ``fit`` into OUT.

    torchrun --standalone --nproc_per_node 2 tests/ddp_stream_check.py TREE OUT
"""
import multiprocessing
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hallnll import cotrain, distributed, engine, load_config  # noqa: E402
from hallnll.data.stream import StreamImages  # noqa: E402
from hallnll.run import Run  # noqa: E402
from hallnll.train import fit, prepare  # noqa: E402

torch.set_num_threads(1)
tree, out = Path(sys.argv[1]), Path(sys.argv[2])
# the CPU-sized Clothing1M run of tests/test_clothing1m.py (TINY), one decoding worker per rank, 2 epochs,
# with Clothing1M's two co-trained networks (params/clothing1m.yaml: nets 2), each data-parallel
TINY = ["nets=2", "image_size=32", "resize_size=36", "arch=small_cnn", "width=8", "pretrained=", "batch_size=16",
        "epoch_batches=4", "epochs=2", "lr_decay_epoch=0", "loader_workers=1", "bn_recal_images=32",
        "diagnostics=false", "progress=false", "eval_batch_size=64", "checkpoint_every=0", f"data_root={tree}"]
distributed.setup()
w, r = distributed.world(), distributed.rank()
assert w == 2, w
cfg = load_config("clothing1m", TINY)

planned = []  # (train?, size) of every request this rank's workers were asked to decode
workers = set()  # the pids of this rank's decoding workers, after every request
_loader = StreamImages._loader


def loader(self, reqs):
    planned.extend((bool(q[2]), len(q[0])) for q in reqs)
    it = _loader(self, reqs)
    workers.update(c.pid for c in multiprocessing.active_children())
    return it


StreamImages._loader = loader


def same_on_all_ranks(name, obj: dict):
    objs = [None] * w
    dist.all_gather_object(objs, obj)
    bad = [k for k in obj if not torch.equal(obj[k], objs[1 - r][k])]
    assert not bad, f"{name} differ between ranks: {bad[:5]}"


data, noisy, _ = prepare(cfg)
run = Run(cfg, data, noisy)
assert run.train_x.streamed and run.train_x.workers == 1
n = len(noisy)
# a global step: each rank scores its shard (decoded by its workers), gathered in order = one process on all N
logits, feats = distributed.predict_all(run.model, run.train_x, cfg.eval_batch_size)
shard_requests = list(planned)
want, want_f = engine.predict(run.model, run.train_x, cfg.eval_batch_size)
torch.testing.assert_close(logits, want, rtol=0, atol=1e-5)
torch.testing.assert_close(feats, want_f, rtol=0, atol=1e-5)
sl = distributed.shard(n)
assert sum(k for _, k in shard_requests) == sl.stop - sl.start == n // 2, shard_requests
# a warm-up and an SSL epoch of both networks: every training request is this rank's half (8) of a global
# batch of 16; each network's BatchNorm re-estimation (rank 0's statistics are kept) decodes its 32 images
# whole on each rank (2 requests of 16)
for _ in range(2):
    planned.clear()
    row = run.epoch()
    sizes = Counter(k for train, k in planned if train)
    if row["phase"] == "warmup":
        assert sizes == {8: 16, 16: 4}, sizes  # the warm-up draw of 128: 8 steps per network
    else:
        assert set(sizes) == {8, 16} and sizes[16] == 4 and sizes[8] % 2 == 0, sizes  # labeled + unlabeled parts
        assert planned.count((False, 32)) == 2, planned  # each network's easiness pass: this rank's shard of 64
# one worker decoded every split, draw and pass of this rank's run: started once (hallnll.data.stream.DecodePool;
# a worker forked per pass hung this check's ranks now and then)
assert len(workers) == 1, workers
picks = []
for k, net in enumerate(run.nets):
    same_on_all_ranks(f"network {k + 1}'s parameters and buffers", net.model.state_dict())
    assert net.train_model is not net.model and net.train_model.module is net.model  # its own DDP
    with cotrain.acting(run, k):
        _, sel, _ = run.select()
    same_on_all_ranks(f"network {k + 1}'s selection",
                      {"easy": sel.easy_mask, "clean_hard": sel.clean_hard_mask, "labels": sel.train_labels})
    picks.append(sel)
if r == 0:
    print(f"ddp_stream_check: shards {sl.stop - sl.start}+{n - (sl.stop - sl.start)} of {n}, training requests of 8 "
          f"(half of 16) per rank, |easy| {int(picks[0].easy_mask.sum())} and {int(picks[1].easy_mask.sum())} of the "
          f"two networks: identical on both ranks")
fit(cfg, out)
distributed.barrier()
dist.destroy_process_group()
