"""The noisy training labels a config names (``cfg.noise``): one dispatch over
the generators, the classifier and the label files, and their report."""
from __future__ import annotations

from ..data.cifar_n import load_cifar_n
from ..resources import data_file
from ..data.sources import ImageData
from .classifier import average_softmax, noise_device
from .files import load_label_csv
from .generators import asymmetric, check_labels, classification_based, default_mapping, ptd, symmetric
from .report import report


def make_noisy_labels(cfg, data: ImageData, device=None, progress: bool = True):
    """The noisy training labels named by ``cfg.noise`` and their :class:`NoiseReport`.

    Returns ``(noisy, report)``, ``noisy`` an int64 CPU tensor aligned with
    ``data.y_train``. The config is checked (:meth:`Config.validate`) before any work.
    """
    cfg.validate()
    kind, rate = cfg.noise, cfg.noise_rate
    c = data.num_classes
    clean = check_labels(data.y_train, c, f"{data.name} training labels").cpu()
    seed = int(cfg.noise_seed)
    note = ""

    if kind == "none":
        noisy, target, seed_out = clean.clone(), 0.0, None
    elif kind == "symmetric":
        noisy, target, seed_out = symmetric(clean, c, rate, seed), rate, seed
    elif kind == "asymmetric":
        mapping = default_mapping(c)
        noisy, target, seed_out = asymmetric(clean, c, rate, seed, mapping), rate, seed
        note = "target rate applies to each mapped class " + ", ".join(f"{s}->{t}" for s, t in mapping.items())
    elif kind == "ptd":
        x = data.x_train.to(noise_device(cfg, device))
        noisy = ptd(x, clean, c, rate, seed, std=cfg.ptd_std).cpu()
        target, seed_out = rate, seed
    elif kind == "classification":
        probs = average_softmax(data, cfg, noise_device(cfg, device), progress=progress)
        noisy, target, seed_out = classification_based(clean, c, rate, probs).cpu(), rate, seed
    elif kind == "cifar-n":
        noisy = check_labels(load_cifar_n(cfg.cifar_n_file, cfg.cifar_n, clean_labels=clean), c,
                              f"cifar-n {cfg.cifar_n}").cpu()
        target, seed_out, note = None, None, f"CIFAR-N {cfg.cifar_n} labels from {cfg.cifar_n_file}"
    else:  # file
        _, noisy = load_label_csv(data_file(cfg.noise_file), c, clean)
        target, seed_out, note = None, None, f"labels from {cfg.noise_file}"
    return noisy, report(clean, noisy, c, kind, target, seed_out, note)
