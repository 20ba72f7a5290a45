"""Write tests/golden/digits_metrics.json: a short digits run of every variant.

    python tests/golden/make_golden.py      # one torch thread, as the tests run

Run this only when a change of behaviour is intended (say so in the commit);
tests/test_golden.py compares every later run against the file.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from hallnll import load_config  # noqa: E402
from hallnll.train import fit, prepare  # noqa: E402

VARIANTS = ("ce", "gmm", "easy", "hallnll")
#: a few epochs each: 3 of warm-up, 3 of SSL with the lr step at 5 (the digits params otherwise)
OVERRIDES = ["epochs=6", "warmup_epochs=3", "lr_decay_epoch=5", "progress=false"]
PARAMS = REPO / "params" / "digits-quick.yaml"
GOLDEN = HERE / "digits_metrics.json"


def rows_without_timings(path) -> list:
    rows = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    for r in rows:
        r.pop("seconds", None)
    return rows


def main() -> None:
    torch.set_num_threads(1)
    cfg = load_config(PARAMS, OVERRIDES)
    data, noisy, _ = prepare(cfg, progress=False)
    out = {"params": "params/digits-quick.yaml", "overrides": OVERRIDES, "threads": 1,
           "noisy": "".join(map(str, noisy.tolist())), "metrics": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for v in VARIANTS:
            fit(cfg.replace(variant=v), Path(tmp) / v, data=data, noisy=noisy)
            out["metrics"][v] = rows_without_timings(Path(tmp) / v / "metrics.jsonl")
    GOLDEN.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
