"""All settings of a run in one place: Table 6 of the paper as a frozen dataclass.

Every field of :class:`Config` is either a column of Table 6 (epochs,
warm-up, learning rate, momentum, weight decay, batch size, lambda_p, K, P,
lambda_conf, lambda_mse), a detail the paper leaves open (its choice and the
reason, with the measurement, in docs/choices.md, cited beside the field), or
a speed lever (the ``speed`` group, :data:`SPEED`, :mod:`hallnll.levers`).
Each field declares its allowed values (:func:`setting`). A run is described
by a YAML file in ``params/`` (shipped with the package:
``load_config("cifar10-cbased-40")`` works anywhere) plus optional ``--set
key=value`` overrides (``--set speed.compile=true`` or ``--set compile=true``)::

    cfg = load_config("params/cifar10-cbased-40.yaml", overrides=["epochs=20", "lr_decay_epoch=12"])
    cfg = cfg.replace(seed=1)  # a Config is frozen: a changed one is a new one, checked again

Input is checked here, at the boundary, in one place (:meth:`Config.validate`,
run whenever a Config is made): unknown keys (with a suggestion), wrong types
and out-of-range values raise :class:`ConfigError` before any data is read
or any file written.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .resources import names, params_path

from .data.cifar_n import CIFAR_N_KEYS
from .data.stream import JPEG_DECODERS
from .hallucination import HAL_NORMS
from .levers import COMPILE_MODES, SGD_IMPLS
from .selection import GMM_BACKENDS

# the allowed values of the settings, each list written once (the modules that use them import them)
VARIANTS = ("ce", "gmm", "easy", "hallnll", "dividemix")
DATASETS = ("digits", "cifar10", "cifar100", "folder", "arrays", "clothing1m")  # arrays: images in memory (find_label_issues)
NOISE_KINDS = ("none", "symmetric", "asymmetric", "ptd", "classification", "cifar-n", "file")
ARCHS = ("small_cnn", "preact_resnet18", "resnet34", "resnet50")
EASY_SELECTIONS = ("balanced", "gmm")
CIFAR_N_KINDS = tuple(CIFAR_N_KEYS)


#: Settings that cannot change a run's results: a checkpoint made with other
#: values of these is resumed (``epochs`` may grow: the schedule does not depend
#: on it), any other difference is refused (:func:`hallnll.train.check_resumable`).
RESULT_FREE = ("name", "progress", "checkpoint_every", "epochs", "download", "data_root")
#: Settings added after checkpoints were already written, with the value that
#: reproduces a run made before them (what a saved config without the key means).
LEGACY_VALUES = {"hal_skip": False, "hal_norm": "free"}
#: Noise kinds generated from the clean labels: only these have a target rate (``noise_rate``).
GENERATED_NOISE = ("symmetric", "asymmetric", "ptd", "classification")
#: Settings read only to make the noisy labels, with the noise kinds that read them.
NOISE_ONLY = {"noise_rate": GENERATED_NOISE, "noise_seed": GENERATED_NOISE, "ptd_std": ("ptd",),
              "noise_file": ("file",), "cifar_n": ("cifar-n",), "cifar_n_file": ("cifar-n",),
              **{k: ("classification",) for k in ("cbased_epochs", "cbased_lr", "cbased_lr_milestones",
                                                  "cbased_lr_gamma", "cbased_softmax_augmented")}}


def inert_settings(settings: dict) -> set:
    """The settings that cannot change a run with these ``settings``: those of a
    noise kind other than its own (e.g. ``cbased_epochs`` where the labels come
    from a file). The resume check and the jobs' skip rule leave them out, so a
    changed default of such a setting does not refuse or redo a run."""
    noise = settings.get("noise")
    return {k for k, kinds in NOISE_ONLY.items() if noise not in kinds}


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range."""


def setting(default=None, *, choices=None, low=None, high=None, low_open=False, high_open=False, also=(),
            hint=None, factory=None, group=None):
    """A Config field with its allowed values beside it (checked by :meth:`Config.validate`):
    ``choices`` (the only values), or a range ``low``..``high`` (``*_open``: the bound itself
    excluded) with ``also`` extra values outside it (e.g. -1 for "derived"); ``hint`` replaces
    the generic message; ``group="speed"`` marks a speed lever (:mod:`hallnll.levers`)."""
    md = {k: v for k, v in (("choices", choices), ("low", low), ("high", high), ("hint", hint), ("group", group))
          if v is not None}
    md.update(low_open=low_open, high_open=high_open, also=tuple(also))
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


def _range_text(m: dict) -> str:
    lo, hi = m.get("low"), m.get("high")
    if hi is None:
        if lo == 0 and not m["low_open"]:
            return "must not be negative"
        return "must be positive" if lo == 0 else f"must be at least {lo:g}"
    return f"must lie in {'(' if m['low_open'] else '['}{lo:g}, {hi:g}{')' if m['high_open'] else ']'}"


@dataclass(frozen=True)
class Config:
    """The settings of a run, frozen: change one with :meth:`replace` (``cfg.replace(epochs=20)``,
    validated again). Each field declares its allowed values (:func:`setting`), all checked in
    :meth:`validate`, which every Config passes when it is made. Why each open choice is what it
    is, with its measurement: docs/choices.md (cited beside the field)."""

    # ---- experiment -------------------------------------------------------
    name: str = "run"
    seed: int = 0
    variant: str = setting("hallnll", choices=VARIANTS)  # ce | gmm (Table 5 row 1) | easy (row 2) | hallnll (row 3) | dividemix (nets: 2)
    nets: int = setting(1, choices=(1, 2), hint="use 1 (one network) or 2 (two co-trained networks, as DivideMix)")  # docs/choices.md#nets

    # ---- data -------------------------------------------------------------
    dataset: str = setting("digits", choices=DATASETS)
    data_root: str = ".data"  # where cifar-10-batches-py/ lives or is downloaded to (relative: to the working folder)
    download: bool = True  # torchvision download when the folder is missing (needs network)
    folder_train_csv: str = ""  # dataset=folder: a CSV path,label (paths relative to it); docs/choices.md#folder-test
    folder_test_csv: str = ""  # dataset=folder: an optional clean test CSV (none: every image trained on and reported)
    image_size: int = setting(32, low=4, hint="must be at least 4 (pixels)")  # dataset=folder: images resized to this side
    label_folds: int = setting(2, low=0, hint="must be 0 (one run, in-sample) or at least 2 (k-fold, out-of-sample)")  # docs/choices.md#label-folds
    suggest_confidence: float = setting(0.9, low=0.0, high=1.0, hint="must lie in [0, 1] (0.9: change a label only at 90% confidence)")  # docs/choices.md#suggest-confidence
    train_subset: int = setting(0, low=0, hint="must not be negative (0 means: all / the default)")  # the first N training images only (0: all); docs/choices.md#subsets
    test_subset: int = setting(0, low=0, hint="must not be negative (0 means: all / the default)")

    # ---- label noise (hallnll.noise) --------------------------------------
    noise: str = setting("classification", choices=NOISE_KINDS)
    noise_rate: float = setting(0.4, low=0.0, high=1.0, hint="must lie in [0, 1] (0.4 means 40% of the labels are wrong)")
    noise_file: str = ""  # noise=file: CSV label,label_noisy (e.g. the published C-based labels)
    cifar_n: str = setting("worst", choices=CIFAR_N_KINDS, hint="use random1|random2|random3|aggregate|worst (CIFAR-10N) or noisy (CIFAR-100N)")
    cifar_n_file: str = ""  # noise=cifar-n: CIFAR-10_human.pt/.npz or CIFAR-100_human.pt/.npz
    noise_seed: int = 1
    ptd_std: float = setting(0.1, low=0.0)  # PTD: std of the truncated normal of per-sample flip rates (Xia et al.)
    # noise=classification: the clean-label CNN whose averaged softmax picks the flips (Chen et al.'s CIFAR-10 recipe); docs/choices.md#cbased
    cbased_epochs: int = setting(150, low=0)
    cbased_lr: float = setting(0.1, low=0.0)
    cbased_lr_milestones: list = setting(factory=lambda: [60, 120])  # lr *= cbased_lr_gamma from each on
    cbased_lr_gamma: float = setting(0.2, low=0.0, low_open=True, hint="must be positive (Chen et al. use 0.2)")
    cbased_softmax_augmented: bool = True  # False: the plain images (their MNIST script has no augmentation)

    # ---- model --------------------------------------------------------------
    arch: str = setting("small_cnn", choices=ARCHS, hint=f"is not a model; use one of {', '.join(ARCHS)}")
    pretrained: str = ""  # resnet50: ImageNet weights, a state-dict file or torchvision's name (IMAGENET1K_V1, ...)
    width: int = setting(0, low=0, hint="must not be negative (0 means: all / the default)")  # base channels (0: the model's own)

    # ---- Table 6 ------------------------------------------------------------
    epochs: int = setting(200, low=1)  # Total epochs
    warmup_epochs: int = setting(10, low=0)  # Warm-up epochs (T_warm)
    lr: float = setting(0.02, low=0.0)  # Init. learning rate (Table 6 prints 0.002, App. A 0.02); docs/choices.md#lr
    momentum: float = setting(0.9, low=0.0, high=1.0, high_open=True)  # SGD Momentum
    weight_decay: float = setting(5e-4, low=0.0)  # Weight decay
    batch_size: int = setting(128, low=1)  # Batch size
    warmup_batch_size: int = setting(0, low=0, hint="must not be negative (0: batch_size)")  # the warm-up's batch; docs/choices.md#warmup_batch_size
    lambda_p: float = setting(0.6, low=0.5, high=1.0, hint="must lie in [0.5, 1] (§3.2)")  # difficulty of a hallucinated anchor, Eq. 2
    k: int = setting(3, low=1)  # K: at most K valid anchors vote for a corrected label (§3.3)
    p: float = setting(0.4, low=0.0, high=1.0, low_open=True, hint="must lie in (0, 1]: the share of each class kept as easy (Eq. 1), e.g. p=0.4")  # P%, Eq. 1
    lambda_conf: float = setting(0.8, low=0.0, high=1.0, low_open=True)  # cosine threshold for a valid anchor (§3.3)
    lambda_mse: float = setting(25.0, low=0.0)  # weight of the unlabeled MSE term, Eq. 3
    lr_decay_epoch: int = setting(120, low=0, hint="must not be negative (0: no decay)")  # lr / 10 from this 0-based epoch (App. A: 120 of 200); docs/choices.md#lr-decay

    # ---- details the paper leaves open (docs/choices.md) ---------------------------
    gmm_threshold: float = setting(0.5, low=0.0, high=1.0)  # variant=gmm: labeled if easiness > threshold (DivideMix's p_threshold)
    easy_selection: str = setting("balanced", choices=EASY_SELECTIONS, hint="use balanced (Eq. 1) or gmm (DivideMix's threshold)")  # docs/choices.md#easy-selection
    hal_hidden: int = setting(0, low=0)  # h_phi's hidden width (0: d); docs/choices.md#hallucinator
    hal_out_relu: bool = True  # h_phi ends in a ReLU, anchors in the real features' cone; docs/choices.md#hallucinator
    hal_skip: bool = True  # h_phi starts at L_clo's balance; docs/choices.md#hallucinator
    hal_norm: str = setting("parents", choices=HAL_NORMS, hint="use parents (the parents' mean norm times a learned scale) or free")
    hal_iters: int = setting(0, low=0)  # I_max (0: ceil(|D| / B)); docs/choices.md#anchor-count
    hal_batch_size: int = setting(0, low=0)  # 0: batch_size
    hal_lr: float = setting(0.0, low=0.0)  # 0: the model's learning rate (Alg. 1 uses one eta)
    clean_hard_weight: float = setting(-1.0, low=0.0, high=1.0, also=(-1.0,), hint="must be -1 (anchor similarity) or lie in [0, 1]")  # docs/choices.md#clean-hard-weight
    sharpen_t: float = setting(0.5, low=0.0, high=1.0, low_open=True)  # T of the sharpening in MixMatch
    mixup_alpha: float = setting(4.0, low=0.0, low_open=True)  # Beta(alpha, alpha), l = max(l, 1 - l)
    rampup_epochs: int = setting(16, low=0)  # DivideMix's linear ramp-up of lambda_mse after warm-up
    lambda_prior: float = setting(1.0, low=0.0)  # DivideMix's uniform-prior penalty
    warmup_entropy_penalty: float = setting(0.0, low=0.0)  # DivideMix's negative-entropy term in the warm-up; docs/choices.md#warmup-entropy
    gmm_max_iter: int = setting(10, low=0)  # DivideMix's GaussianMixture(max_iter=10, tol=1e-2, reg_covar=5e-4)

    # ---- augmentation -----------------------------------------------------------
    crop_padding: int = setting(4, low=0, also=(-1,), hint="must be -1 (an eighth of the image side) or a padding in pixels >= 0")  # random crop padding (-1: side / 8)
    hflip: bool = True  # random horizontal flip (off for digits: a mirrored 3 is not a 3)

    # ---- engine ---------------------------------------------------------------------
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_batch_size: int = setting(1024, low=1)
    bn_recal_images: int = setting(10000, low=0, hint="must not be negative (0 means: all / the default)")  # precise BN after every epoch (0: off); docs/choices.md#bn-recal
    diagnostics: bool = True  # per-epoch diagnostics in metrics.jsonl (two extra test passes); docs/choices.md#diagnostics
    checkpoint_every: int = setting(1, low=0)  # epochs between checkpoints (0: only at the end)
    progress: bool = True  # tqdm progress bars
    threads: int = setting(1, low=0)  # torch's CPU threads for every command (0: torch's own); docs/choices.md#threads

    # ---- streamed data and Clothing1M (hallnll.data.stream, hallnll.data.clothing1m) ----
    resize_size: int = setting(256, low=0)  # dataset=clothing1m: shorter side resized to this, then an image_size crop
    loader_workers: int = setting(4, low=0)  # DataLoader workers of the streamed path (0: in the training process)
    jpeg_decode: str = setting("auto", choices=JPEG_DECODERS, hint="use auto (the device's decoder on CUDA), workers (CPU) or device")  # docs/choices.md#jpeg_decode
    stream_above_gb: float = setting(8.0, low=0.0)  # a folder larger than this (decoded uint8 GiB) is streamed; docs/choices.md#streaming
    epoch_batches: int = setting(0, low=0)  # per epoch a class-balanced draw of this many batches (0: all); docs/choices.md#epoch-batches

    # ---- speed levers (hallnll.levers; --set speed.NAME=... or NAME=...; measured by `hallnll bench --levers`) ----
    bf16: bool = setting(True, group="speed")  # bf16 autocast on CUDA (fp32 on the CPU unless cpu_bf16)
    channels_last: bool = setting(True, group="speed")  # on CUDA (and on the CPU with cpu_bf16)
    cpu_bf16: bool = setting(False, group="speed")  # bf16 + channels_last on the CPU too; docs/choices.md#cpu-bf16
    cudnn_benchmark: bool = setting(True, group="speed")  # cuDNN's algorithm search during Run.epoch (CUDA)
    gmm_backend: str = setting("torch", choices=GMM_BACKENDS, group="speed", hint="use torch (on the device) or sklearn (scikit-learn on the host)")  # docs/choices.md#gmm-backend
    hal_graph: bool = setting(False, group="speed")  # the hallucinator's update as a CUDA graph; docs/choices.md#levers
    sgd_impl: str = setting("default", choices=SGD_IMPLS, group="speed", hint="use default, foreach or fused")
    compile: bool = setting(False, group="speed")  # torch.compile the model for the training steps (CUDA, or a non-inductor backend)
    compile_step: bool = setting(False, group="speed")  # torch.compile the whole warm-up and MixMatch steps
    compile_mode: str = setting("default", choices=COMPILE_MODES, group="speed", hint="use default, reduce-overhead (CUDA graphs), max-autotune or max-autotune-no-cudagraphs")
    compile_backend: str = setting("inductor", group="speed")  # inductor; aot_eager / eager for checks on the CPU

    def __post_init__(self):
        types = _field_types()
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), types[f.name]))
        if self.crop_padding == -1:  # an eighth of the image side, resolved here so config.yaml holds the number
            object.__setattr__(self, "crop_padding", max(1, image_side(self) // 8))
        self.validate()

    # ------------------------------------------------------------------------
    def validate(self) -> "Config":
        """Raise :class:`ConfigError` naming the first bad value and the fix: every field's
        declared values (:func:`setting`), then the rules between fields. Run when a Config is
        made (a frozen Config stays valid); ``fit``, ``Run``, ``find_label_issues`` and the CLI
        all take one."""

        def bad(key, msg):
            raise ConfigError(f"config: {key}={getattr(self, key)!r} {msg}")

        for f in fields(self):
            m, v = f.metadata, getattr(self, f.name)
            if "choices" in m and v not in m["choices"]:
                what = {"variant": "a variant", "dataset": "a dataset", "noise": "a noise kind"}.get(f.name)
                bad(f.name, m.get("hint") or (f"is not {what}; " if what else "") + f"use one of {', '.join(map(str, m['choices']))}")
            if ("low" in m or "high" in m) and v not in m["also"]:
                lo, hi = m.get("low"), m.get("high")
                above = lo is None or (v > lo if m["low_open"] else v >= lo)  # written so that NaN fails both
                below = hi is None or (v < hi if m["high_open"] else v <= hi)
                if not (above and below):
                    bad(f.name, m.get("hint") or _range_text(m))
        # ---- rules between fields
        if self.variant == "dividemix" and self.nets != 2:
            bad("variant", "co-trains two networks: set nets=2 (variant=gmm is its one-network form)")
        if self.label_folds == 1:
            bad("label_folds", "must be 0 (one run, in-sample) or at least 2 (k-fold, out-of-sample)")
        if self.width and self.arch == "resnet50":
            bad("width", "has no effect on arch=resnet50 (torchvision's ResNet-50); leave it at 0")
        if self.warmup_epochs > self.epochs:
            bad("warmup_epochs", f"exceeds epochs={self.epochs}")
        if self.lr_decay_epoch >= self.epochs:
            at = int(0.6 * self.epochs)
            hint = f"lr_decay_epoch={at} (60% of the run, as the paper's 120 of 200) or " if at >= 1 else ""
            bad("lr_decay_epoch", f"is not below epochs={self.epochs}: the learning rate would never be divided "
                                  f"by 10; use --set {hint}lr_decay_epoch=0 for a constant learning rate")
        if self.noise == "classification" and self.cbased_epochs < 1:
            bad("cbased_epochs", "must be at least 1 for noise=classification: the epochs of the clean-label CNN "
                                 "(Chen et al. use 150 on CIFAR-10, 20 on MNIST)")
        ms = self.cbased_lr_milestones
        if not all(isinstance(m, int) and not isinstance(m, bool) for m in ms):
            bad("cbased_lr_milestones", "must be a list of epochs, e.g. [60, 120] (Chen et al.) or [] (constant lr)")
        if any(m < 1 for m in ms) or any(b <= a for a, b in zip(ms, ms[1:])):
            bad("cbased_lr_milestones", "must be increasing epochs of at least 1, e.g. [60, 120]")
        if self.noise == "classification" and ms and ms[-1] >= self.cbased_epochs:
            bad("cbased_lr_milestones", f"reaches past cbased_epochs={self.cbased_epochs}: that lr step would never "
                                        f"happen. Scale the milestones with the epochs (Chen et al.: [60, 120] of "
                                        f"150, i.e. 40% and 80%) or use [] for a constant lr")
        if self.noise == "file" and not self.noise_file:
            bad("noise_file", "is empty: noise=file needs a CSV with columns label,label_noisy")
        if self.noise == "cifar-n" and not self.cifar_n_file:
            bad("cifar_n_file", "is empty: point it at CIFAR-10_human.pt/.npz or CIFAR-100_human.pt/.npz")
        if self.dataset == "clothing1m" and self.resize_size < self.image_size:
            bad("resize_size", f"is below image_size={self.image_size}: the crop must fit in the resized image "
                               f"(DivideMix: 256 and 224)")
        if self.dataset == "folder" and not self.folder_train_csv:
            bad("folder_train_csv", "is empty: dataset=folder needs a CSV with columns path,label")
        if not self.compile_backend:
            bad("compile_backend", "is empty: use inductor (the default) or aot_eager / eager for checks")
        return self

    # ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The settings as one flat mapping (what config.yaml and a checkpoint hold)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Config":
        """A new Config with ``changes`` (flat names or ``speed.NAME``), validated."""
        return from_dict({**self.to_dict(), **changes})

    def speed(self) -> dict:
        """The speed levers' settings (the ``speed`` group, :data:`SPEED`)."""
        return {k: getattr(self, k) for k in SPEED}

    def save(self, path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


#: the speed levers' settings (:mod:`hallnll.levers`), the ``speed`` group of :class:`Config`
SPEED = tuple(f.name for f in fields(Config) if f.metadata.get("group") == "speed")


def _coerce(key: str, value: Any, typ) -> Any:
    """Check ``value`` against the field type; ints are accepted for floats."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and isinstance(value, bool):
        return value
    if typ is bool or not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"config: {key}={value!r} should be of type {typ.__name__}")
    return value


_TYPES = None


def _field_types() -> dict:
    global _TYPES
    if _TYPES is None:
        hints = typing.get_type_hints(Config)
        _TYPES = {f.name: hints[f.name] for f in fields(Config)}
    return _TYPES


def _flat(d: dict) -> dict:
    """``speed.NAME`` keys and a nested ``speed:`` mapping as the flat field names."""
    out = {}
    for key, value in d.items():
        if key == "speed" and isinstance(value, dict):
            for k, v in value.items():
                out[_speed_key(f"speed.{k}")] = v
        else:
            out[_speed_key(key) if isinstance(key, str) and key.startswith("speed.") else key] = value
    return out


def _speed_key(key: str) -> str:
    name = key[len("speed."):]
    if name not in SPEED:
        raise ConfigError(f"config: unknown key {key!r}; the speed levers are {', '.join('speed.' + s for s in SPEED)}")
    return name


def from_dict(d: dict) -> Config:
    """Build and validate a :class:`Config` from a plain mapping (flat names, ``speed.NAME`` or
    a nested ``speed:`` mapping)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"config: expected a mapping of settings, got {type(d).__name__}")
    types = _field_types()
    d = _flat(d)
    for key in d:
        if key not in types:
            close = difflib.get_close_matches(str(key), types, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(types)}"
            raise ConfigError(f"config: unknown key {key!r}{hint}")
    return Config(**d)


def image_side(cfg: Config) -> int:
    """The side in pixels of the images ``cfg`` trains on (8 digits, 32 CIFAR, image_size a folder)."""
    return {"digits": 8, "cifar10": 32, "cifar100": 32}.get(cfg.dataset, cfg.image_size)


def parse_overrides(overrides) -> dict:
    """Turn ``["epochs=20", "p=0.5"]`` into ``{"epochs": 20, "p": 0.5}`` (YAML-typed)."""
    out = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set epochs=20")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"--set {item!r}: the key is empty; expected key=value, e.g. --set epochs=20")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({_yaml_problem(e)}); quote it, "
                              f"e.g. --set {key.strip()}='\"{raw}\"'") from None
    return out


def _yaml_problem(e: Exception) -> str:
    """A YAML error in one line: what and where (line, column from 1)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else what


def read_params_file(p: Path):
    """The YAML in ``p``, or one :class:`ConfigError` saying what is wrong and where."""
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config: {str(p)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config: cannot read {str(p)!r} ({e.strerror or e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        tab = line is not None and "\t" in (text.splitlines()[line:line + 1] or [""])[0]
        hint = "; YAML indents with spaces, not tabs: replace the tab" if tab or "\t" in str(e) else \
            "; each line is key: value (see the shipped params files)"
        raise ConfigError(f"config: {str(p)!r} is not valid YAML: {_yaml_problem(e)}{hint}") from None


def load_config(path=None, overrides=None, **changes) -> Config:
    """Read a params YAML (or nothing: the defaults), apply overrides, validate.

    ``path`` is a YAML file, or the name of a shipped params file
    (``digits-quick``, ``cifar10-cbased-40``, ...; :mod:`hallnll.resources`).
    """
    d: dict = {}
    if path is not None:
        p = params_path(path)
        if p.is_dir():
            raise ConfigError(f"config: params file {str(path)!r} is a folder; give a YAML file in it, or the name "
                              f"of a shipped one: {', '.join(names('params'))}")
        if not p.is_file():
            raise ConfigError(f"config: params file {str(path)!r} not found; give a path to a YAML file or the "
                              f"name of a shipped one: {', '.join(names('params'))}")
        loaded = read_params_file(p)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config: {str(p)!r} must hold a mapping of settings")
        d.update(loaded or {})
    d.update(parse_overrides(overrides))
    d.update(changes)
    return from_dict(d)
