"""All settings of a run in one place: Table 6 of the paper as a dataclass.

Every field of :class:`Config` is either a column of Table 6 (epochs,
warm-up, learning rate, momentum, weight decay, batch size, lambda_p, K, P,
lambda_conf, lambda_mse) or a detail the paper leaves open, with the choice
we made and why written beside it. A run is described by a YAML file in
``params/`` (shipped with the package: ``load_config("cifar10-cbased-40")``
works anywhere) plus optional ``--set key=value`` overrides::

    cfg = load_config("params/cifar10-cbased-40.yaml", overrides=["epochs=20", "lr_decay_epoch=12"])

Input is checked here, at the boundary: unknown keys (with a suggestion),
wrong types and out-of-range values raise :class:`ConfigError` before any
data is read or any file written.
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

VARIANTS = ("ce", "gmm", "easy", "hallnll", "dividemix")
DATASETS = ("digits", "cifar10", "cifar100", "folder", "arrays", "clothing1m")  # arrays: images in memory (find_label_issues)
NOISE_KINDS = ("none", "symmetric", "asymmetric", "ptd", "classification", "cifar-n", "file")
ARCHS = ("small_cnn", "preact_resnet18", "resnet34", "resnet50")


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


@dataclass
class Config:
    # ---- experiment -------------------------------------------------------
    name: str = "run"
    seed: int = 0
    variant: str = "hallnll"  # ce | gmm (Table 5 row 1) | easy (row 2) | hallnll (row 3) | dividemix (nets: 2)
    # Networks co-trained (hallnll.cotrain): 1, the paper's setting "in most of our
    # experiment settings"; 2 as DivideMix and as the paper on Clothing1M (§4.2): each
    # network's selection divides the data for the other, unlabeled targets are
    # co-guessed by both, evaluation is on the sum of both networks' logits.
    # variant=dividemix is DivideMix itself: two networks, GMM threshold, no hallucination.
    nets: int = 1

    # ---- data -------------------------------------------------------------
    dataset: str = "digits"  # digits | cifar10 | cifar100 | folder | clothing1m
    data_root: str = ".data"  # where cifar-10-batches-py/ lives or is downloaded to (relative: to the working folder)
    download: bool = True  # torchvision download when the folder is missing (needs network)
    # dataset=folder: a CSV with columns path,label (paths relative to the CSV,
    # labels 0..C-1 or class names) and an optional clean test CSV. Without a
    # test CSV there is no test set and no test accuracy: every image is trained
    # on and gets a row in the label-issue report (a held-out split of the same
    # noisy labels would score the model against noise and leave its images
    # unreported).
    folder_train_csv: str = ""
    folder_test_csv: str = ""
    image_size: int = 32  # dataset=folder: images are resized to image_size x image_size
    # The label-issue report (hallnll.label_issues): its probabilities come from
    # label_folds runs of the method, each on the other folds of the training
    # images, so no image's suggestion comes from a model that trained on its
    # given label; 0 uses the final model of one run on all images (which has
    # trained on the given labels of its easy samples). 2 costs one run on all
    # images (two on half); the two are compared in the README ("Your own noisy
    # dataset", benchmarks/label_issues.py --ablation).
    label_folds: int = 2
    # The report suggests another label for an issue only where the out-of-sample
    # probability of that class is at least this; elsewhere it keeps the given
    # label. 0.9 because on the development data (benchmarks/label_issues_dev.py:
    # C-based 30% labels of CIFAR-10 images 40000-43999, the CPU profile's model)
    # every lower bar (0, 0.5, 0.7, 0.8) made the suggested labels less accurate
    # than the given ones (70.03% right) with the method's and with
    # cross-entropy models; at 0.9: 69.97% and 70.45%.
    suggest_confidence: float = 0.9
    # Train / test on the first N images only (0: all). The noisy labels are
    # made (or read) for the whole training set first and then cut the same
    # way, so a subset keeps the published labels of its own images. For
    # CPU-scale checks on real data (``hallnll fidelity``); the order of
    # CIFAR's files is already shuffled, so the first N are a fair sample.
    train_subset: int = 0
    test_subset: int = 0

    # ---- label noise (hallnll.noise) --------------------------------------
    noise: str = "classification"  # none|symmetric|asymmetric|ptd|classification|cifar-n|file
    noise_rate: float = 0.4
    noise_file: str = ""  # noise=file: CSV label,label_noisy (e.g. the published C-based labels)
    cifar_n: str = "worst"  # noise=cifar-n: random1|random2|random3|aggregate|worst|noisy
    cifar_n_file: str = ""  # noise=cifar-n: CIFAR-10_human.pt/.npz or CIFAR-100_human.pt/.npz
    noise_seed: int = 1
    ptd_std: float = 0.1  # PTD: std of the truncated normal of per-sample flip rates (Xia et al.)
    # Classification-based noise (hallnll.noise.classifier.average_softmax): the
    # clean-label CNN whose softmax, averaged over its epochs, picks the flips.
    # The defaults are Chen et al.'s CIFAR-10 recipe (chenpf1025/IDN,
    # cifar10_gen_dependent.py): 150 epochs, lr 0.1 times 0.2 from epochs 60
    # and 120 (0-based here; their 1-based "epoch > 60"), the softmax taken
    # in eval mode on one random crop/flip of each training image per epoch
    # (their softmax loader uses the training transform). Scale them down
    # together (e.g. 30 epochs, milestones [12, 24]) for a cheaper run; the
    # milestones must lie below cbased_epochs. Their MNIST script uses 20
    # epochs at a constant lr 0.01 without augmentation; the digits params
    # file sets a short constant-lr run of its own. The model is cfg.arch,
    # not their WRN-28-10; momentum, weight decay and batch are the run's.
    cbased_epochs: int = 150
    cbased_lr: float = 0.1
    cbased_lr_milestones: list = field(default_factory=lambda: [60, 120])  # lr *= cbased_lr_gamma from each on
    cbased_lr_gamma: float = 0.2
    cbased_softmax_augmented: bool = True  # False: the plain images (their MNIST script has no augmentation)

    # ---- model --------------------------------------------------------------
    arch: str = "small_cnn"  # small_cnn | preact_resnet18 | resnet34 | resnet50
    # resnet50: ImageNet weights, a local torchvision state-dict file or torchvision's
    # weights name (IMAGENET1K_V1, as DivideMix's pretrained=True; IMAGENET1K_V2),
    # downloaded into torch's hub cache when online (hallnll.models.imagenet_state_dict)
    pretrained: str = ""
    width: int = 0  # base channels (0: the model's own, 64 for the CIFAR ResNets); narrow for CPU-scale checks

    # ---- Table 6 ------------------------------------------------------------
    epochs: int = 200  # Total epochs
    warmup_epochs: int = 10  # Warm-up epochs (T_warm)
    # Init. learning rate. Table 6 prints 0.002 for the CIFAR columns, the text
    # (App. A) says 0.02, the DivideMix recipe the method follows uses 0.02:
    # we default to 0.02 and keep Table 6's value one --set away.
    lr: float = 0.02
    momentum: float = 0.9  # SGD Momentum
    weight_decay: float = 5e-4  # Weight decay
    batch_size: int = 128  # Batch size
    # The warm-up's batch (0: batch_size). DivideMix's warm-up loader takes twice
    # its MixMatch batch (Train_cifar.py: batch_size*2, 128 for 64); the paper
    # gives one batch size, so one is the default, and variant=dividemix runs
    # DivideMix's schedule with batch_size=64 warmup_batch_size=128.
    warmup_batch_size: int = 0
    lambda_p: float = 0.6  # difficulty of a hallucinated anchor, Eq. 2
    k: int = 3  # K: at most K valid anchors vote for a corrected label (§3.3)
    p: float = 0.4  # P%: share of the training set selected as easy (Eq. 1)
    lambda_conf: float = 0.8  # cosine threshold for a valid anchor (§3.3)
    lambda_mse: float = 25.0  # weight of the unlabeled MSE term, Eq. 3
    # lr divided by 10 from this (0-based) epoch on (App. A: 120 of 200).
    # It must lie below epochs, else the run would never decay; 0 = no decay
    # (a constant lr, for quick runs or a first part to be resumed later).
    # A value >= epochs is refused, not scaled: the README's own
    # `--set epochs=50` example kept 120 and silently never decayed, and a
    # scaled value would depend on which epochs the params file had in mind
    # and change when a run is resumed with more epochs. The message names the
    # value at the paper's 60% (30 for 50 epochs).
    lr_decay_epoch: int = 120

    # ---- details the paper leaves open ----------------------------------------
    gmm_threshold: float = 0.5  # variant=gmm: labeled if easiness > threshold (DivideMix's p_threshold)
    # How the easy subset is chosen for easy/hallnll: "balanced" is Eq. 1;
    # "gmm" is DivideMix's easiness > gmm_threshold, which the paper uses for
    # Clothing1M (§4.2). Variant gmm always uses "gmm".
    easy_selection: str = "balanced"
    # Hallucinator h_phi: a two-layer MLP (2d -> hidden -> d). The width is not
    # given; 0 means "hidden = d", the smallest width that is not a bottleneck.
    hal_hidden: int = 0
    # End h_phi with a ReLU: real features (ReLU + average pooling) are
    # non-negative, so anchors are kept in that cone (see hallucination.py).
    hal_out_relu: bool = True
    # h_phi starts at L_clo's balance: s_a = ReLU(lambda_p s_u + (1 - lambda_p) s_v + MLP),
    # its last layer zero at first; and its output's direction is learned apart
    # from its norm (rescaled to the parents' mean norm times a learned scalar).
    # Measured, with the reasons, in hallucination.Hallucinator (issue 17);
    # hal_skip=false, hal_norm=free is the hallucinator before it.
    hal_skip: bool = True
    hal_norm: str = "parents"  # parents | free
    # Anchors: Alg. 1 runs I_max hallucinator iterations per epoch, each on a
    # mini-batch of easy features s_u, every s_u paired with a fresh s_v of
    # another class, and keeps every anchor in S_hal. The paper does not give
    # I_max; hal_iters=0 means one pass over the training set, ceil(|D| / B),
    # so each easy feature parents about 1/P anchors per epoch (2.5 at P=0.4):
    # the "multiple anchors per s_u" of §3.2. hal_batch_size=0 means B.
    hal_iters: int = 0
    hal_batch_size: int = 0
    hal_lr: float = 0.0  # 0: the model's learning rate (Alg. 1 uses one eta)
    # Label refinement weight w of a clean-hard sample (the easy samples use
    # their easiness omega, as DivideMix uses its clean probability). The paper
    # does not say; -1 means "the mean cosine similarity of its voting anchors"
    # (>= lambda_conf), i.e. trust a corrected label as much as its anchors
    # resemble it. Any value in [0, 1] fixes w instead.
    clean_hard_weight: float = -1.0
    sharpen_t: float = 0.5  # T of the sharpening in MixMatch
    mixup_alpha: float = 4.0  # Beta(alpha, alpha), l = max(l, 1 - l)
    rampup_epochs: int = 16  # DivideMix's linear ramp-up of lambda_mse after warm-up
    lambda_prior: float = 1.0  # DivideMix's uniform-prior penalty
    # Weight w of DivideMix's negative-entropy penalty in the warm-up loss,
    # CE + w * mean_i sum_c p_ic log p_ic (engine.neg_entropy). DivideMix adds it
    # (w = 1) for asymmetric noise only, so that a network warmed up on
    # structured noise is not yet confident on its wrong labels when the loss
    # GMM splits them. The paper does not say; 0 = off. Applied in the warm-up
    # of the SSL variants only: variant ce is the plain cross-entropy baseline
    # (Table 5's CE row) and stays so. Each params file sets its value beside
    # the measurement behind it.
    warmup_entropy_penalty: float = 0.0
    gmm_max_iter: int = 10  # DivideMix's GaussianMixture(max_iter=10, tol=1e-2, reg_covar=5e-4)

    # ---- augmentation -----------------------------------------------------------
    # random crop with this zero padding (4 for CIFAR); -1: an eighth of the
    # image side (1 for 8x8 digits, 4 at 32 px, CIFAR's ratio), resolved when
    # the Config is made, so config.yaml holds the number used
    crop_padding: int = 4
    hflip: bool = True  # random horizontal flip (off for digits: a mirrored 3 is not a 3)

    # ---- engine ---------------------------------------------------------------------
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA (fp32 on the CPU unless cpu_bf16)
    channels_last: bool = True  # on CUDA (and on the CPU with cpu_bf16)
    # bf16 autocast and channels_last on the CPU as well: on CPUs with AMX /
    # AVX-512-BF16 (this project's 2-core machines) a PreActResNet-18 of width
    # 16 trains at 807 images/s against 355 in fp32 (one thread); elsewhere it
    # is slower, hence off by default. The fidelity check sets it, which also
    # puts its CPU runs on the same bf16 + channels_last path as the GPU's.
    cpu_bf16: bool = False
    eval_batch_size: int = 1024
    # BatchNorm statistics are re-estimated after every training epoch
    # (warm-up, ce and SSL) on this many augmented, un-mixed training images
    # (0: keep the running averages; "precise BN", as
    # torch.optim.swa_utils.update_bn does it). Why: the running averages are
    # an EMA of the last ~20 batches, taken under older weights and, in the
    # SSL epoch, over mixed images (whose variance is ~0.55x a real image's)
    # and the concatenated target batch; after a short epoch they lag the
    # weights. Measured on digits at batch 128, clean labels, variant gmm:
    # 80.7% test accuracy in eval mode vs 97.1% with batch statistics at
    # epoch 12 (shared/findings); eval mode is what selects the easy set.
    bn_recal_images: int = 10000
    # Per-epoch diagnostics in metrics.jsonl: test accuracy with the running
    # averages before re-estimation and with test-batch statistics; accuracy
    # of the predictions on the unlabeled set; anchor similarity quantiles.
    # Costs two extra test passes and a sample of feature pairs per epoch.
    diagnostics: bool = True
    checkpoint_every: int = 1  # epochs between checkpoints (0: only at the end)
    progress: bool = True  # tqdm progress bars
    # torch's CPU threads for every command (noise generation, training,
    # evaluation), set for the duration of the call and restored after; 0 leaves
    # torch's setting alone (by default every core). 1 because on the 2-core
    # development CPU one thread was faster than two for every model this
    # project runs on a CPU (measured in the README, "Threads"), and because the
    # regenerated noise depends on the thread count (float reduction order):
    # one setting everywhere gives the same labels in train and quickstart.
    threads: int = 1

    def __post_init__(self):
        if self.crop_padding == -1:  # see crop_padding
            self.crop_padding = max(1, image_side(self) // 8)

    # ---- speed levers (each measured by `hallnll bench --levers`, benchmarks/README.md) ----
    # The loss GMM of §3.1: "torch" fits it on the device of the losses with
    # scikit-learn's algorithm step for step (k-means++ draws from
    # RandomState(seed), Lloyd and its stopping rules, EM, tol, reg_covar;
    # float64; no host round-trip); "sklearn" runs scikit-learn's
    # GaussianMixture on the host. Same omega on the losses of the tests
    # (tests/test_levers.py); torch is the default because it was also the
    # faster on the CPU (benchmarks/README.md, "CPU figures for the levers").
    gmm_backend: str = "torch"
    # The hallucinator phase's I_max updates of h_phi, each captured once as a
    # CUDA graph and replayed (CUDA; elsewhere the same fixed-buffer step runs
    # eagerly). Same kernels and draws as the eager loop; off until measured.
    hal_graph: bool = False
    # torch.optim.SGD's implementation: default (torch's choice: foreach on
    # CUDA, a per-parameter loop on the CPU), foreach, or fused (one kernel).
    sgd_impl: str = "default"
    # cuDNN benchmark mode during Run.epoch (CUDA only; the process-wide flag
    # is restored after each epoch): every training step has one shape, so
    # cuDNN times its convolution algorithms once per shape and keeps the fastest.
    cudnn_benchmark: bool = True
    # torch.compile the model for the training steps (compile) and/or the
    # whole warm-up and MixMatch steps, augmentation included (compile_step;
    # it compiles the model inside the step, so it does not need compile).
    # Applied on CUDA, or on any device with a compile_backend other than
    # inductor (aot_eager: how the CPU tests check the compiled paths).
    # compile_mode (inductor): default | reduce-overhead (CUDA graphs) |
    # max-autotune | max-autotune-no-cudagraphs.
    compile: bool = False
    compile_step: bool = False
    compile_mode: str = "default"
    compile_backend: str = "inductor"

    # ---- streamed data and Clothing1M (hallnll.data.stream, hallnll.data.clothing1m) ----
    # dataset=clothing1m: data_root is the Clothing1M folder as distributed; the
    # images are decoded per batch by loader_workers DataLoader workers with
    # DivideMix's transforms: shorter side resized to resize_size (256), a random
    # image_size (224) crop and a flip for training, the centre crop to evaluate.
    resize_size: int = 256
    loader_workers: int = 4  # DataLoader workers of the streamed path (0: decode in the training process)
    # Where the streamed JPEGs are decoded: workers (libjpeg-turbo in the DataLoader
    # workers), device (the workers read the bytes, torchvision.io.decode_jpeg decodes
    # each batch on the run's device: nvJPEG on CUDA), auto = device on CUDA only,
    # because there the CPU workers' decoding can bound the epoch (reason and
    # figures: hallnll.data.stream).
    jpeg_decode: str = "auto"
    # A folder whose decoded uint8 training set (N x 3 x image_size^2 bytes) would
    # exceed this many GiB is streamed instead of held on the device: 8 GiB is
    # 55x CIFAR-10's 150 MB, fits beside a ResNet-50 on a 24 GB GPU, and is
    # ~170k images at 128 px or ~57k at 224 px. 0: always stream.
    stream_above_gb: float = 8.0
    # Per epoch, a class-balanced draw (by the given labels) of epoch_batches x
    # batch_size training images, and every step of the epoch (the easiness
    # pass and GMM, the selection, the SSL epoch) runs on that draw; a warm-up
    # epoch draws twice as many. DivideMix's Clothing1M recipe (num_batches=1000:
    # its eval_train draw of 32,000 images is what the GMM is fitted on and the
    # labeled/unlabeled split is made of; its warm-up draws 64,000). 0: the
    # whole training set every epoch (CIFAR).
    epoch_batches: int = 0

    # ------------------------------------------------------------------------
    def validate(self) -> "Config":
        """Raise :class:`ConfigError` naming the first bad value and the fix."""

        def bad(key, msg):
            raise ConfigError(f"config: {key}={getattr(self, key)!r} {msg}")

        if self.variant not in VARIANTS:
            bad("variant", f"is not a variant; use one of {', '.join(VARIANTS)}")
        if self.nets not in (1, 2):
            bad("nets", "use 1 (one network) or 2 (two co-trained networks, as DivideMix)")
        if self.variant == "dividemix" and self.nets != 2:
            bad("variant", "co-trains two networks: set nets=2 (variant=gmm is its one-network form)")
        if self.dataset not in DATASETS:
            bad("dataset", f"is not a dataset; use one of {', '.join(DATASETS)}")
        if self.noise not in NOISE_KINDS:
            bad("noise", f"is not a noise kind; use one of {', '.join(NOISE_KINDS)}")
        if self.arch not in ARCHS:
            bad("arch", f"is not a model; use one of {', '.join(ARCHS)}")
        if not 0.0 <= self.noise_rate <= 1.0:
            bad("noise_rate", "must lie in [0, 1] (0.4 means 40% of the labels are wrong)")
        for key in ("p", "lambda_conf"):
            v = getattr(self, key)
            if not 0.0 < v <= 1.0:
                bad(key, "must lie in (0, 1]")
        if not 0.5 <= self.lambda_p <= 1.0:
            bad("lambda_p", "must lie in [0.5, 1] (§3.2)")
        if self.easy_selection not in ("balanced", "gmm"):
            bad("easy_selection", "use balanced (Eq. 1) or gmm (DivideMix's threshold)")
        if self.hal_norm not in ("parents", "free"):
            bad("hal_norm", "use parents (the parents' mean norm times a learned scale) or free")
        if not 0.0 <= self.gmm_threshold <= 1.0:
            bad("gmm_threshold", "must lie in [0, 1]")
        if not (self.clean_hard_weight == -1.0 or 0.0 <= self.clean_hard_weight <= 1.0):
            bad("clean_hard_weight", "must be -1 (anchor similarity) or lie in [0, 1]")
        for key in ("epochs", "batch_size", "k", "eval_batch_size"):
            if getattr(self, key) < 1:
                bad(key, "must be at least 1")
        if self.crop_padding < 0:
            bad("crop_padding", "must be -1 (an eighth of the image side) or a padding in pixels >= 0")
        if self.image_size < 4:
            bad("image_size", "must be at least 4 (pixels)")
        for key in ("train_subset", "test_subset", "width", "bn_recal_images", "warmup_batch_size"):
            if getattr(self, key) < 0:
                bad(key, "must not be negative (0 means: all / the default)")
        if self.width and self.arch == "resnet50":
            bad("width", "has no effect on arch=resnet50 (torchvision's ResNet-50); leave it at 0")
        for key in ("warmup_epochs", "threads", "hal_hidden", "hal_batch_size", "hal_iters",
                    "rampup_epochs", "gmm_max_iter", "cbased_epochs", "checkpoint_every"):
            if getattr(self, key) < 0:
                bad(key, "must not be negative")
        if self.warmup_epochs > self.epochs:
            bad("warmup_epochs", f"exceeds epochs={self.epochs}")
        if self.lr_decay_epoch < 0:
            bad("lr_decay_epoch", "must not be negative (0: no decay)")
        if self.lr_decay_epoch >= self.epochs:
            at = int(0.6 * self.epochs)
            hint = f"lr_decay_epoch={at} (60% of the run, as the paper's 120 of 200) or " if at >= 1 else ""
            bad("lr_decay_epoch", f"is not below epochs={self.epochs}: the learning rate would never be divided "
                                  f"by 10; use --set {hint}lr_decay_epoch=0 for a constant learning rate")
        for key in ("lr", "lambda_mse", "weight_decay", "lambda_prior", "hal_lr", "ptd_std",
                    "warmup_entropy_penalty", "cbased_lr"):
            if getattr(self, key) < 0:
                bad(key, "must not be negative")
        if not 0.0 <= self.momentum < 1.0:
            bad("momentum", "must lie in [0, 1)")
        if not 0.0 < self.sharpen_t <= 1.0:
            bad("sharpen_t", "must lie in (0, 1]")
        if self.mixup_alpha <= 0:
            bad("mixup_alpha", "must be positive")
        if self.noise == "classification" and self.cbased_epochs < 1:
            bad("cbased_epochs", "must be at least 1 for noise=classification: the epochs of the clean-label CNN "
                                 "(Chen et al. use 150 on CIFAR-10, 20 on MNIST)")
        ms = self.cbased_lr_milestones
        if not isinstance(ms, (list, tuple)) or not all(isinstance(m, int) and not isinstance(m, bool) for m in ms):
            bad("cbased_lr_milestones", "must be a list of epochs, e.g. [60, 120] (Chen et al.) or [] (constant lr)")
        if any(m < 1 for m in ms) or any(b <= a for a, b in zip(ms, ms[1:])):
            bad("cbased_lr_milestones", "must be increasing epochs of at least 1, e.g. [60, 120]")
        if self.noise == "classification" and ms and ms[-1] >= self.cbased_epochs:
            bad("cbased_lr_milestones", f"reaches past cbased_epochs={self.cbased_epochs}: that lr step would never "
                                        f"happen. Scale the milestones with the epochs (Chen et al.: [60, 120] of "
                                        f"150, i.e. 40% and 80%) or use [] for a constant lr")
        if not self.cbased_lr_gamma > 0:
            bad("cbased_lr_gamma", "must be positive (Chen et al. use 0.2)")
        if self.noise == "file" and not self.noise_file:
            bad("noise_file", "is empty: noise=file needs a CSV with columns label,label_noisy")
        if self.noise == "cifar-n":
            if self.cifar_n not in ("random1", "random2", "random3", "aggregate", "worst", "noisy"):
                bad("cifar_n", "use random1|random2|random3|aggregate|worst (CIFAR-10N) or noisy (CIFAR-100N)")
            if not self.cifar_n_file:
                bad("cifar_n_file", "is empty: point it at CIFAR-10_human.pt/.npz or CIFAR-100_human.pt/.npz")
        if not 0.0 <= self.suggest_confidence <= 1.0:
            bad("suggest_confidence", "must lie in [0, 1] (0.9: change a label only at 90% confidence)")
        if self.label_folds == 1 or self.label_folds < 0:
            bad("label_folds", "must be 0 (one run, in-sample) or at least 2 (k-fold, out-of-sample)")
        for key in ("resize_size", "loader_workers", "epoch_batches", "stream_above_gb"):
            if getattr(self, key) < 0:
                bad(key, "must not be negative")
        if self.dataset == "clothing1m" and self.resize_size < self.image_size:
            bad("resize_size", f"is below image_size={self.image_size}: the crop must fit in the resized image "
                               f"(DivideMix: 256 and 224)")
        if self.dataset == "folder" and not self.folder_train_csv:
            bad("folder_train_csv", "is empty: dataset=folder needs a CSV with columns path,label")
        if self.jpeg_decode not in ("auto", "workers", "device"):
            bad("jpeg_decode", "use auto (the device's decoder on CUDA), workers (CPU) or device")
        if self.gmm_backend not in ("torch", "sklearn"):
            bad("gmm_backend", "use torch (on the device) or sklearn (scikit-learn on the host)")
        if self.sgd_impl not in ("default", "foreach", "fused"):
            bad("sgd_impl", "use default, foreach or fused")
        if self.compile_mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
            bad("compile_mode", "use default, reduce-overhead (CUDA graphs), max-autotune or max-autotune-no-cudagraphs")
        if not self.compile_backend:
            bad("compile_backend", "is empty: use inductor (the default) or aot_eager / eager for checks")
        return self

    # ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "Config":
        return from_dict({**self.to_dict(), **changes})

    def save(self, path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


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


def from_dict(d: dict) -> Config:
    """Build and validate a :class:`Config` from a plain mapping."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"config: expected a mapping of settings, got {type(d).__name__}")
    types = _field_types()
    kwargs = {}
    for key, value in d.items():
        if key not in types:
            close = difflib.get_close_matches(str(key), types, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(types)}"
            raise ConfigError(f"config: unknown key {key!r}{hint}")
        kwargs[key] = _coerce(key, value, types[key])
    return Config(**kwargs).validate()


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
