"""Label noise: the synthetic and published noisy labels of §4.1.

Kinds (``cfg.noise``):

- ``none``: the clean labels;
- ``symmetric``, ``asymmetric``, ``ptd``, ``classification``: the generators
  of :mod:`hallnll.noise.generators` (pure functions of the clean labels and a
  seed; PTD after Xia et al. 2020, classification-based after Chen et al.
  2021, whose clean-label CNN is :mod:`hallnll.noise.classifier`, the one
  module here that trains a model);
- ``cifar-n``: the human labels of CIFAR-10N/100N (Wei et al., ICLR 2022),
  read by :func:`hallnll.data.load_cifar_n`;
- ``file``: a ``label,label_noisy`` CSV (:mod:`hallnll.noise.files`), e.g.
  the published classification-based labels ``dependent0.{1,2,3,4}.csv`` behind
  Table 2.

:func:`make_noisy_labels` (:mod:`hallnll.noise.make`) makes the labels a
config names, after checking the config once; :func:`report`
(:mod:`hallnll.noise.report`) summarises a label set as its realised rate and
transition matrix ``P(noisy=j | clean=i)``. ``hallnll noise`` (in
:mod:`hallnll.tools.cli`) writes a label CSV.
"""
from .classifier import average_softmax, cbased_lr
from .files import CSV_HEADER, load_label_csv, save_label_csv
from .generators import DIVIDEMIX_CIFAR10_MAP, NoiseError, asymmetric, classification_based, ptd, symmetric
from .make import make_noisy_labels
from .report import NoiseReport, report

__all__ = ["NoiseError", "NoiseReport", "report", "symmetric", "asymmetric", "ptd", "classification_based",
           "average_softmax", "cbased_lr", "load_label_csv", "save_label_csv", "CSV_HEADER", "DIVIDEMIX_CIFAR10_MAP",
           "make_noisy_labels"]
