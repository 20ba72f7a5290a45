"""Host-synchronisation counting of the bench (``--set bench.sync_check=true``, CUDA):
a :class:`hallnll.run.Timer` that counts the syncs of every Run step instead of timing it."""
from __future__ import annotations

import contextlib
import math
import warnings

import torch

from ..config import Config
from ..run import Timer


class SyncCounter(Timer):
    """A :class:`hallnll.run.Timer` that counts host synchronisations per step
    (under ``torch.cuda.set_sync_debug_mode("warn")``) instead of timing it."""

    def __init__(self):
        super().__init__(None)
        self.syncs: dict = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(0)
        k = sum("synchroniz" in str(x.message).lower() for x in caught)
        self.syncs[name] = self.syncs.get(name, 0) + k


def sync_report(counts: dict, dev, cfg: Config, ce_steps: int, n_test: int, hal_iters: int) -> dict:
    """CUDA only: host synchronisations per Run step of one warm-up and one SSL epoch."""
    if dev.type != "cuda":
        return {"skipped": "sync debug mode needs CUDA"}
    per = {"warmup": ce_steps, "hallucinate": hal_iters,
           "eval": math.ceil(n_test / cfg.eval_batch_size)}
    out = {name: {"syncs": k, "iterations": per.get(name, 1), "per_iteration": k / max(per.get(name, 1), 1)}
           for name, k in counts.items()}
    out["note"] = ("per Run step (hallnll.run.Run); easiness includes the GMM on the host, select_hard and ssl the "
                   "boolean-mask indexing; syncs between steps (the metrics row) are not counted")
    return out
