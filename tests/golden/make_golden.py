"""Write the golden files of tests/test_golden.py: a short digits run of every variant.

    python tests/golden/make_golden.py      # one torch thread, as the tests run
    python tests/golden/make_golden.py --first-ssl-only   # keep the warm-up state and 6-epoch runs
    python tests/golden/make_golden.py --measure OUT.json # this machine's, into OUT.json (the golden files stay)

Two files, both made on one machine (its CPU kind is recorded):
- ``digits_metrics.json``: the 6-epoch metrics rows of each variant (compared
  exactly, to 1e-6, on a machine of the recorded CPU kind), and the first SSL
  epoch of gmm / easy / hallnll continued from the stored warm-up state
  (compared on every CPU, within tolerances measured across CPU kernel sets).
- ``digits_warmup.pt``: that state, the run after its 3 warm-up epochs (model,
  optimiser, generators): a fixed input, so the SSL epoch compared on every
  CPU starts from the same weights wherever it runs.

Run this only when a change of behaviour is intended (say so in the commit).
"""
from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from hallnll import load_config  # noqa: E402
from hallnll.run import Run  # noqa: E402
from hallnll.train import fit, prepare  # noqa: E402

VARIANTS = ("ce", "gmm", "easy", "hallnll")
SSL_VARIANTS = ("gmm", "easy", "hallnll")
#: a few epochs each: 3 of warm-up, 3 of SSL with the lr step at 5 (the digits params otherwise)
OVERRIDES = ["epochs=6", "warmup_epochs=3", "lr_decay_epoch=5", "progress=false"]
PARAMS = REPO / "params" / "digits-quick.yaml"
GOLDEN = HERE / "digits_metrics.json"
WARMUP = HERE / "digits_warmup.pt"
WARMUP_KEYS = ("model", "opt", "gen", "rng", "epoch", "history")


def cpu_kind() -> str:
    """The CPU kernels a run uses: ATen's vector ISA, the one oneDNN may use
    (``ONEDNN_MAX_CPU_ISA`` caps it; otherwise what the CPU flags allow) and the CPU's
    vendor. The vendor is part of it because the same ISA is not the same arithmetic
    across vendors: on 2026-12-02 an Intel Xeon run with ``ONEDNN_MAX_CPU_ISA=AVX2
    ATEN_CPU_CAPABILITY=avx2`` gave the first warm-up epoch's loss 1.8648782 where the
    AMD EPYC that made the golden file (AVX2 natively) gave 1.8649206 (MKL's and
    oneDNN's kernels are chosen per CPU, not per ISA alone; ``MKL_ENABLE_INSTRUCTIONS``
    and ``MKL_CBWR`` did not close the gap)."""
    aten = torch.backends.cpu.get_cpu_capability()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    flags = info.split()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if not cap or cap == "ALL":
        cap = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other"
    vendor = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("vendor_id")), "unknown")
    return f"aten={aten} onednn={cap} vendor={vendor}"


def rows_without_timings(path) -> list:
    rows = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    for r in rows:
        r.pop("seconds", None)
    return rows


def first_ssl_epoch(cfg, data, noisy, warmup: dict, variant: str) -> dict:
    """Epoch 4 (the first SSL epoch) of ``variant`` from the stored warm-up state: its
    metrics row (timings aside) and the selection it trained on. ``warmup`` is left as it was
    (the optimiser would otherwise share, and update, its momentum buffers)."""
    warmup = copy.deepcopy(warmup)
    run = Run(cfg.replace(variant=variant), data, noisy)
    run.model.load_state_dict(warmup["model"])
    run.opt.load_state_dict(warmup["opt"])
    run.gen.set_state(warmup["gen"])
    run.rng.bit_generator.state = warmup["rng"]
    run.epochs_done, run.history = warmup["epoch"], list(warmup["history"])
    row = run.epoch()
    row.pop("seconds")
    last = run.last
    return {"row": row, "labeled": last["easy_mask"].logical_or(last["clean_hard_mask"]).nonzero().squeeze(1).tolist(),
            "clean_hard": last["clean_hard_mask"].nonzero().squeeze(1).tolist(),
            "train_labels": last["train_labels"].tolist()}


def setting():
    cfg = load_config(PARAMS, OVERRIDES)
    data, noisy, _ = prepare(cfg, progress=False)
    return cfg, data, noisy


def variant_runs(cfg, data, noisy, tmp: Path) -> dict:
    """The 6-epoch run of every variant (trained in ``tmp``): variant -> its metrics rows, timings aside."""
    for v in VARIANTS:
        fit(cfg.replace(variant=v), tmp / v, data=data, noisy=noisy)
    return {v: rows_without_timings(tmp / v / "metrics.jsonl") for v in VARIANTS}


def first_ssl_epochs(cfg, data, noisy, warmup: dict) -> dict:
    """:func:`first_ssl_epoch` of every SSL variant from the warm-up state ``warmup``."""
    return {v: first_ssl_epoch(cfg, data, noisy, warmup, v) for v in SSL_VARIANTS}


def measure(path) -> None:
    """This machine's numbers in the golden file's form, written to ``path`` (the golden
    files are left alone): the first SSL epochs from the stored warm-up state and, where
    this CPU kind is the golden file's, the 6-epoch runs of every variant (elsewhere
    tests/test_golden.py does not compare them). tests/test_golden.py runs it with the
    AVX2 kernels on CPUs with AVX-512."""
    torch.set_num_threads(1)
    cfg, data, noisy = setting()
    golden = json.loads(GOLDEN.read_text())
    out = {"cpu": cpu_kind(), "noisy": "".join(map(str, noisy.tolist())), "metrics": {}, "first_ssl_epoch": {}}
    out["first_ssl_epoch"] = first_ssl_epochs(cfg, data, noisy, torch.load(WARMUP, weights_only=False))
    if out["cpu"] == golden["cpu"]:
        with tempfile.TemporaryDirectory() as tmp:
            out["metrics"] = variant_runs(cfg, data, noisy, Path(tmp))
    Path(path).write_text(json.dumps(out) + "\n")


def main(first_ssl_only: bool = False) -> None:
    torch.set_num_threads(1)
    cfg, data, noisy = setting()
    out = {"params": "params/digits-quick.yaml", "overrides": OVERRIDES, "threads": 1, "cpu": cpu_kind(),
           "noisy": "".join(map(str, noisy.tolist())), "metrics": {}, "first_ssl_epoch": {}}
    if first_ssl_only:  # --first-ssl-only: the stored warm-up and 6-epoch runs as they are
        old = json.loads(GOLDEN.read_text())
        assert old["cpu"] == out["cpu"] and old["noisy"] == out["noisy"], "made on another CPU kind or labels"
        out["metrics"] = old["metrics"]
        out["first_ssl_epoch"] = first_ssl_epochs(cfg, data, noisy, torch.load(WARMUP, weights_only=False))
        GOLDEN.write_text(json.dumps(out, indent=1) + "\n")
        print(f"rewrote the first SSL epochs of {GOLDEN}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out["metrics"] = variant_runs(cfg, data, noisy, Path(tmp))
        # the warm-up state: the same for every SSL variant (the warm-up does not read the variant)
        fit(cfg.replace(variant="hallnll", epochs=cfg.warmup_epochs, lr_decay_epoch=0), Path(tmp) / "warm",
            data=data, noisy=noisy)
        state = torch.load(Path(tmp) / "warm" / "checkpoint.pt", weights_only=False)
    warmup = {k: state[k] for k in WARMUP_KEYS}
    torch.save(warmup, WARMUP)
    out["first_ssl_epoch"] = first_ssl_epochs(cfg, data, noisy, warmup)
    GOLDEN.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {GOLDEN} and {WARMUP} ({out['cpu']})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure(sys.argv[2])
    else:
        main(first_ssl_only="--first-ssl-only" in sys.argv[1:])
