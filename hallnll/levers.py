"""The speed levers, in one place: options that wrap the method's eager steps
without changing what they compute. Their settings are the ``speed`` group of
:class:`hallnll.config.Config` (``Config.SPEED``; ``--set speed.compile=true``
or the flat ``--set compile=true``); ``hallnll bench --levers``
(:mod:`hallnll.tools.bench_levers`) times them one by one, and
docs/choices.md says which are on by default and why.

==================  =====================================================================
lever               what it wraps
==================  =====================================================================
bf16, cpu_bf16      bf16 autocast of the steps (:func:`use_bf16`; CUDA, or the CPU with cpu_bf16)
channels_last       the images and the model in channels_last memory (with bf16 / on CUDA)
cudnn_benchmark     cuDNN's algorithm search during :meth:`Run.epoch` (:func:`cudnn_benchmark`)
sgd_impl            torch.optim.SGD's implementation (:func:`sgd_options`): the same update
gmm_backend         the §3.1 GMM in torch on the device (:mod:`hallnll.gmm_torch`) or scikit-learn's
hal_graph           the hallucinator's update on fixed buffers, a CUDA graph on CUDA (:class:`StaticHalStep`)
compile,            torch.compile of the model (compile) or of the whole warm-up and MixMatch
compile_step, ...   step losses (compile_step), :func:`compile_run`
==================  =====================================================================
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

SGD_IMPLS = ("default", "foreach", "fused")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# ---------------------------------------------------------------- precision and memory format
def use_bf16(cfg, device: torch.device) -> bool:
    """Whether ``cfg`` asks for bf16 autocast (and channels_last) on ``device``:
    on CUDA with ``bf16``; on the CPU only with ``cpu_bf16`` as well."""
    return bool(cfg.bf16) and (device.type == "cuda" or (device.type == "cpu" and bool(cfg.cpu_bf16)))


def use_channels_last(cfg, device: torch.device, bf16: bool) -> bool:
    """channels_last where ``cfg`` asks for it: on CUDA, or on the CPU with bf16 autocast."""
    return bool(cfg.channels_last) and (device.type == "cuda" or bf16)


def memory_format(model: nn.Module, channels_last: bool) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if channels_last else model


# ---------------------------------------------------------------- cuDNN and SGD
@contextlib.contextmanager
def cudnn_benchmark(on: bool, device: torch.device):
    """cuDNN benchmark mode (on CUDA, when ``on``) for the duration of the block, then
    the previous setting again: the process-wide flag is not left changed."""
    if not on or torch.device(device).type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def sgd_options(impl: str = "default") -> dict:
    """torch.optim.SGD's keyword for ``impl``: ``default`` (torch's choice: foreach on
    CUDA, a loop over parameters on the CPU), ``foreach`` or ``fused`` (one kernel for
    all parameters). All compute the same update."""
    if impl not in SGD_IMPLS:
        raise ValueError(f"sgd implementation {impl!r}: use one of {', '.join(SGD_IMPLS)}")
    return {"foreach": True} if impl == "foreach" else {"fused": True} if impl == "fused" else {}


# ---------------------------------------------------------------- torch.compile
def compile_active(device: torch.device, backend: str = "inductor") -> bool:
    """Whether torch.compile is applied: on CUDA, or with a backend other than
    inductor (aot_eager / eager, for checks on the CPU). Inductor on a CPU
    generates C++ for minutes and the compile switches are GPU levers."""
    return torch.device(device).type == "cuda" or backend != "inductor"


def compiled(fn, mode: str = "default", backend: str = "inductor"):
    """``torch.compile(fn)`` with static shapes; ``mode`` applies to inductor only
    (``reduce-overhead`` replays CUDA graphs)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: use one of {', '.join(COMPILE_MODES)}")
    kw = {"mode": mode} if backend == "inductor" and mode != "default" else {}
    return torch.compile(fn, backend=backend, dynamic=False, **kw)


def compile_run(run, streamed: bool) -> None:
    """Apply ``compile`` / ``compile_step`` to a built :class:`hallnll.run.Run`.

    ``compile``: every network's ``train_model`` (what the training steps call)
    becomes its compiled model. ``compile_step``: the run's ``ce_loss`` and
    ``mixmatch_loss`` (None: the eager :func:`hallnll.engine.ce_loss` and
    :func:`hallnll.ssl.mixmatch_loss`) become those step losses compiled whole,
    augmentation included; they compile the model inside, so the model is left
    plain. Streamed images are decoded by DataLoader workers, which a compiled
    step cannot hold: there ``compile_step`` compiles the model alone."""
    from . import engine, ssl

    cfg = run.cfg
    if not ((cfg.compile or cfg.compile_step) and compile_active(run.device, cfg.compile_backend)):
        return
    if cfg.compile_step and not streamed:
        run.ce_loss = compiled(engine.ce_loss, cfg.compile_mode, cfg.compile_backend)
        run.mixmatch_loss = compiled(ssl.mixmatch_loss, cfg.compile_mode, cfg.compile_backend)
        # tensors the compiled steps read whole: CUDA graphs must not copy them
        for t in (run.train_x.x, run.train_x.mean, run.train_x.std, run.given):
            torch._dynamo.mark_static_address(t)
        return
    for net in run.nets:
        net.train_model = compiled(net.model, cfg.compile_mode, cfg.compile_backend)
    run.train_model = run.nets[0].train_model


# ---------------------------------------------------------------- the hallucinator's update as a CUDA graph
class StaticHalStep:
    """``hal_graph``: one update of h_phi (:func:`hallnll.hallucination.hal_update`,
    Alg. 1 lines 11-14) on fixed buffers, so that on CUDA it is captured once as
    a CUDA graph and replayed for every iteration of the phase.

    :func:`hallnll.hallucination.hallucinate` calls :meth:`begin` once per phase
    (the easy features and the frozen g_rho) and the step once per iteration.
    The buffers: the mini-batch ``s_u``, ``s_v``, ``y_u``, g_rho's ``w``, ``b``,
    the anchors ``s_a`` the update made and its ``losses`` (L_hal, closeness,
    CE). The update is the eager one, op for op: on the CPU it runs eagerly
    (what the tests compare with the plain loop); on CUDA the first
    :attr:`WARMUP` steps after (re)building run eagerly on a side stream (real
    steps of the phase, as CUDA graph capture asks), then one step is captured
    (capture records, it does not run) and replayed. The graph bakes in the
    learning rate: it is captured again when the rate changes. Build a new one
    after loading an optimiser state (the momentum buffers change).
    """

    WARMUP = 3

    def __init__(self, hallucinator: nn.Module, optimizer, classifier: nn.Linear, batch_size: int,
                 lambda_p: float, device):
        dev = torch.device(device)
        d, c = classifier.in_features, classifier.out_features
        self.hal, self.opt, self.lambda_p = hallucinator, optimizer, lambda_p
        self.s_u = torch.zeros(batch_size, d, device=dev)
        self.s_v = torch.zeros(batch_size, d, device=dev)
        self.y_u = torch.zeros(batch_size, dtype=torch.long, device=dev)
        self.w = torch.zeros(c, d, device=dev)
        self.b = torch.zeros(c, device=dev) if classifier.bias is not None else None
        self.s_a = torch.zeros(batch_size, d, device=dev)
        self.losses = torch.zeros(3, device=dev)
        self.feats = None
        self.use_graph = dev.type == "cuda"
        self.graph, self.graph_lr, self.warm = None, None, 0
        self.stream = torch.cuda.Stream(dev) if self.use_graph else None

    def begin(self, feats: torch.Tensor, w: torch.Tensor, b) -> None:
        """A new phase: the easy features the parents index, and g_rho copied into the buffers."""
        self.feats = feats
        self.w.copy_(w)
        if self.b is not None:
            self.b.copy_(b)

    def __call__(self, u: torch.Tensor, v: torch.Tensor, y_u: torch.Tensor) -> tuple:
        """One iteration on parents ``u``, partners ``v`` (positions in the easy set):
        ``(s_a, losses)``, both buffers of this step."""
        torch.index_select(self.feats, 0, u, out=self.s_u)
        torch.index_select(self.feats, 0, v, out=self.s_v)
        self.y_u.copy_(y_u)
        self.run()
        return self.s_a, self.losses

    def step(self) -> None:
        from .hallucination import hal_update

        s_a, losses = hal_update(self.hal, self.opt, self.s_u, self.s_v, self.y_u, self.w, self.b, self.lambda_p)
        self.s_a.copy_(s_a)
        self.losses.copy_(losses)

    def run(self) -> None:
        """One update on the current buffers: eager, a warm-up step, or a graph replay."""
        if not self.use_graph:
            return self.step()
        lr = self.opt.param_groups[0]["lr"]
        if self.graph is not None and self.graph_lr == lr:
            return self.graph.replay()
        if self.warm < self.WARMUP:
            self.warm += 1
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self.step()
            torch.cuda.current_stream().wait_stream(self.stream)
            return None
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.step()
        self.graph_lr, self.warm = lr, 0
        self.graph.replay()
