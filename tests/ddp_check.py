"""Run by tests/test_distributed.py under ``torchrun --standalone --nproc_per_node 2`` (gloo):
an uninterrupted ``fit`` into OUT, then the checks of that DDP run on digits (conftest.DIGITS_TINY: the first
N training images, N odd, so that the two ranks' shards differ by one).

    torchrun --standalone --nproc_per_node 2 tests/ddp_check.py OUT [fit-only]
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hallnll import distributed, engine, load_config, selection  # noqa: E402
from hallnll.train import fit  # noqa: E402
from conftest import DIGITS_TINY  # noqa: E402  (this script's folder, tests/, is on sys.path)

torch.set_num_threads(1)
TINY = ["variant=hallnll", *DIGITS_TINY]  # = test_distributed.TINY
out = Path(sys.argv[1])
distributed.setup()
w, r = distributed.world(), distributed.rank()
assert w == 2, w
cfg = load_config(Path(__file__).resolve().parents[1] / "params" / "digits-quick.yaml", TINY)


def same_on_all_ranks(name, obj):
    objs = [None] * w
    dist.all_gather_object(objs, obj)
    for o in objs[1:]:
        if isinstance(obj, dict):
            bad = [k for k in obj if not torch.equal(obj[k], o[k])]
            assert not bad, f"{name} differ between ranks: {bad[:5]}"
        else:
            assert torch.equal(obj, o), f"{name} differ between ranks"


res = fit(cfg, out)  # two warm-up epochs and two SSL epochs (DDP steps); rank 0 writes OUT
if "fit-only" not in sys.argv:  # the checks, on the weights the run ended with
    run = res.run
    n = len(run.given)
    assert n == cfg.train_subset and n % 2 == 1, n
    # every index scored exactly once, in order, no padding
    idx = distributed.gather_rows(torch.arange(n)[distributed.shard(n)])
    assert torch.equal(idx, torch.arange(n)), "the shards do not cover 0..N-1 once each"
    first = distributed.shard(n, 0).stop - distributed.shard(n, 0).start
    assert first == (n + 1) // 2  # 337 + 336 for N = 673
    # gathered per-sample losses and features equal those of one process on the same weights
    ez = run.easiness()
    logits1, feats1 = engine.predict(run.model, run.train_x, cfg.eval_batch_size)
    torch.testing.assert_close(ez.losses, selection.per_sample_loss(logits1, run.given), rtol=0, atol=1e-6)
    torch.testing.assert_close(ez.feats, feats1, rtol=0, atol=1e-6)
    # the same selection, S_hal, parameters and BatchNorm buffers on every rank
    _, sel, hal = run.select()
    same_on_all_ranks("selections", {"easy": sel.easy_mask, "clean_hard": sel.clean_hard_mask,
                                     "labels": sel.train_labels, "weights": sel.weights, "omega": sel.omega,
                                     "anchors": hal.anchors, "anchor_labels": hal.labels})
    assert int(sel.clean_hard_mask.sum()) > 0 and int(sel.easy_mask.sum()) > 0
    state = run.model.state_dict()
    same_on_all_ranks("parameters", {k: v for k, v in state.items() if "running" not in k})
    same_on_all_ranks("BatchNorm buffers", {k: v for k, v in state.items() if "running" in k or "num_batches" in k})
    if r == 0:
        print(f"ddp_check: rank shards {first}+{n - first}, |easy| {int(sel.easy_mask.sum())}, "
              f"|clean-hard| {int(sel.clean_hard_mask.sum())}: identical on both ranks")
distributed.barrier()
if r == 1:
    assert not (out / "rank1").exists()
dist.destroy_process_group()
