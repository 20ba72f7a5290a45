"""Where a hallucinator puts its anchors on the FIXED features of a trained run (issue 17).

    python benchmarks/hal_fixed_features.py RUN_DIR --phases 3 [--set hal_skip=false --set hal_norm=free ...]

Reads ``RUN_DIR/config.yaml`` and ``RUN_DIR/checkpoint.pt`` (a run of ``hallnll
train``), applies ``--set`` on top, builds a :class:`hallnll.run.Run` with a
fresh h_phi of those settings (the model, optimiser and generators from the
checkpoint), makes one easiness pass and the easy subset (Eq. 1), runs
``--phases`` hallucinator phases (:meth:`Run.hallucinate`, I_max steps each)
on those fixed features, selects the clean-hard samples (:meth:`Run.select_hard`)
and prints one JSON line: :meth:`Run.selection_diagnostics` (the ``hal_*``
geometry of :func:`hallnll.reporting.anchor_geometry`), Eq. 2's terms of the
last phase and the clean-hard count and precision. Every step is the Run's own.
A config.yaml written before ``hal_skip``/``hal_norm`` existed is read with
their old values (``hallnll.config.LEGACY_VALUES``).
"""
from __future__ import annotations

import argparse
import json

import torch
import yaml

from hallnll.config import LEGACY_VALUES, from_dict, parse_overrides
from hallnll.run import Run
from hallnll.train import cpu_threads, prepare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--phases", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    saved = yaml.safe_load(open(f"{a.run_dir}/config.yaml"))
    cfg = from_dict({**LEGACY_VALUES, **saved, **parse_overrides(a.set), "progress": False})
    data, noisy, _ = prepare(cfg)
    with cpu_threads(cfg.threads):
        run = Run(cfg, data, noisy)
        state = torch.load(f"{a.run_dir}/checkpoint.pt", map_location="cpu", weights_only=False)
        state["hal"], state["hal_opt"] = run.hal.state_dict(), run.hal_opt.state_dict()  # a fresh h_phi
        run.load_state_dict(state)
        ez = run.easiness()
        easy = run.select_easy(ez.omega)
        for _ in range(a.phases):
            hal = run.hallucinate(ez.feats, easy)
        sel = run.select_hard(ez.feats, easy, hal)
        out = run.selection_diagnostics(ez, sel, hal)
        out.update(hal_loss=float(hal.loss), hal_closeness=float(hal.closeness), hal_ce=float(hal.ce),
                   n_anchors=len(hal.anchors), n_hard=len(easy.hard_index), n_clean_hard=int(sel.clean_hard_mask.sum()))
        if run.true is not None and bool(sel.clean_hard_mask.any()):
            out["precision_clean_hard"] = float((sel.train_labels == run.true)[sel.clean_hard_mask].float().mean())
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
