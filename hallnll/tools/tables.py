"""The paper's tables as data: for every reproducible table, one :class:`Cell`
per number of its "Ours" row, with the params file and overrides that make the
cell and the paper's mean and std (over three runs). Tables 1, 3 and 4 also
hold their DivideMix row (``method="DivideMix"``): the same params file with
``variant=dividemix nets=2`` (:mod:`hallnll.cotrain`), so the baseline runs on
the method's data, seeds and schedule. ``hallnll reproduce``
(:mod:`hallnll.tools.reproduce`) runs them; notebooks 07, 08 and 10 show them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..config import ConfigError


class ReproduceError(ConfigError):
    """Unknown table, bad scale or seeds: the message lists the choices."""


@dataclass(frozen=True)
class Cell:
    """One number of a table's "Ours" row."""

    key: str  # short id, used in the results files
    label: str  # as the paper's column header
    params: str  # params file: a path, or params/NAME.yaml of the shipped ones (hallnll.resources)
    overrides: tuple = ()  # key=value settings on top of the params file
    paper_mean: Optional[float] = None  # % (the paper's "Ours")
    paper_std: Optional[float] = None
    quick_noise_rate: Optional[float] = None  # quick fallback rate where the params file has none
    method: str = "Ours"  # the paper's row: Ours, or the DivideMix baseline

    @property
    def name(self) -> str:
        """How results name the cell: its label, prefixed by the row unless it is "Ours"."""
        return self.label if self.method == "Ours" else f"{self.method}: {self.label}"


@dataclass(frozen=True)
class Table:
    name: str  # table1, ...
    title: str  # the paper's caption, shortened: "Table 5: ablation on CIFAR-10 ..."
    cells: tuple
    note: str = ""

    @property
    def number(self) -> str:
        """``"Table 5"``."""
        return self.title.split(":")[0]


#: where the params files look for the published C-based labels (relative to the working folder)
_IDN = ".data/noisy-labels/cifar10-classification-idn"
#: DivideMix (Li et al., 2020) as a variant of the package: two co-trained networks, GMM-threshold selection
_DMX = ("variant=dividemix", "nets=2")


def _dividemix(cell: "Cell", mean: float, std: float) -> "Cell":
    """The DivideMix cell beside ``cell``: its params file and overrides, with :data:`_DMX`."""
    return Cell(f"dividemix-{cell.key}", cell.label, cell.params, tuple(cell.overrides) + _DMX, mean, std,
                cell.quick_noise_rate, "DivideMix")


_PTD = (Cell("ptd-20", "PTD 20%", "params/cifar10-ptd-20.yaml", (), 94.26, 0.19),
        Cell("ptd-40", "PTD 40%", "params/cifar10-ptd-40.yaml", (), 95.28, 0.10))
_CN = (Cell("c10n-random1", "CIFAR-10N Random1", "params/cifar10n-random.yaml", ("cifar_n=random1",), 95.21, 0.05, 0.1723),
       Cell("c10n-random2", "CIFAR-10N Random2", "params/cifar10n-random.yaml", ("cifar_n=random2",), 95.31, 0.10, 0.1812),
       Cell("c10n-random3", "CIFAR-10N Random3", "params/cifar10n-random.yaml", ("cifar_n=random3",), 95.25, 0.17, 0.1764),
       Cell("c10n-worst", "CIFAR-10N Worst", "params/cifar10n-worst.yaml", (), 93.52, 0.49, 0.4021),
       Cell("c100n-noisy", "CIFAR-100N Noisy", "params/cifar100n-noisy.yaml", (), 70.79, 0.06, 0.402))
_C1M = Cell("clothing1m", "Clothing1M", "params/clothing1m.yaml", (), 74.62, 0.14, quick_noise_rate=0.385)

TABLES = {
    "table1": Table("table1", "Table 1: CIFAR-10 with PTD label noise (Xia et al., 2020)", (
        *_PTD, *(_dividemix(c, m, s) for c, (m, s) in zip(_PTD, ((93.33, 0.14), (95.07, 0.11)))),
    ), note="DivideMix's numbers are those the paper takes from Zhao et al. (2022)."),
    "table2": Table("table2", "Table 2: CIFAR-10 with classification-based label noise (Chen et al., 2021)", (
        Cell("cbased-10", "10%", "params/cifar10-cbased-10-20.yaml",
             (f"noise_file={_IDN}/dependent0.1.csv", "noise_rate=0.1"), 93.68, 0.47),
        Cell("cbased-20", "20%", "params/cifar10-cbased-10-20.yaml",
             (f"noise_file={_IDN}/dependent0.2.csv", "noise_rate=0.2"), 92.98, 0.11),
        Cell("cbased-40", "40%", "params/cifar10-cbased-40.yaml", (), 92.47, 0.41),
    )),
    "table3": Table("table3", "Table 3: CIFAR-10N / CIFAR-100N (Wei et al., 2022)", (
        *_CN, *(_dividemix(c, m, s) for c, (m, s) in zip(_CN, ((95.16, 0.19), (95.23, 0.07), (95.21, 0.14),
                                                               (92.56, 0.42), (71.13, 0.48))))),
        note="CIFAR-10N Random1/2/3 are 17.2/18.1/17.6% noisy, Worst 40.2%, CIFAR-100N Noisy 40.2%."),
    "table4": Table("table4", "Table 4: Clothing1M", (_C1M, _dividemix(_C1M, 74.40, 0.08)), note="Clothing1M is not redistributable: point data_root at the folder as distributed (see the params "
            "file); the cell reports the test accuracy at the best-validation epoch, as the paper. "
            "Its label noise is estimated at 38.5%; quick scale uses that rate."),
    "table5": Table("table5", "Table 5: ablation on CIFAR-10 with 40% classification-based noise", (
        Cell("gmm", "GMM selection (no easy, no hard)", "params/cifar10-cbased-40.yaml", ("variant=gmm",), 86.24, 0.90),
        Cell("easy", "+ easy selection (Eq. 1)", "params/cifar10-cbased-40.yaml", ("variant=easy",), 89.77, 1.45),
        Cell("hallnll", "+ hard sample correction (full)", "params/cifar10-cbased-40.yaml", ("variant=hallnll",),
             92.47, 0.41),
    )),
    "table7": Table("table7", "Table 7: P% of easy selection (C-based 40%, lambda_conf = 0.8)", (
        Cell("p-0.3", "P = 0.3", "params/cifar10-cbased-40.yaml", ("p=0.3", "lambda_conf=0.8"), 90.38, 0.51),
        Cell("p-0.4", "P = 0.4", "params/cifar10-cbased-40.yaml", ("p=0.4", "lambda_conf=0.8"), 92.47, 0.41),
        Cell("p-0.5", "P = 0.5", "params/cifar10-cbased-40.yaml", ("p=0.5", "lambda_conf=0.8"), 92.38, 0.14),
    )),
    "table8": Table("table8", "Table 8: lambda_conf of hard selection (C-based 40%, P = 0.4)", (
        Cell("lc-0.7", "lambda_conf = 0.7", "params/cifar10-cbased-40.yaml", ("lambda_conf=0.7", "p=0.4"), 91.12, 0.76),
        Cell("lc-0.8", "lambda_conf = 0.8", "params/cifar10-cbased-40.yaml", ("lambda_conf=0.8", "p=0.4"), 92.47, 0.41),
        Cell("lc-0.9", "lambda_conf = 0.9", "params/cifar10-cbased-40.yaml", ("lambda_conf=0.9", "p=0.4"), 91.53, 1.18),
    )),
}


def get_table(name: str) -> Table:
    if name not in TABLES:
        raise ReproduceError(f"unknown table {name!r}; known tables: {', '.join(TABLES)} (or 'all'); "
                             f"see `hallnll reproduce --list`")
    return TABLES[name]


def table_names(name: str | Sequence[str]) -> list:
    """``"all"``, ``"table1,table5"`` or a list, checked against :data:`TABLES`."""
    if isinstance(name, str):
        names = list(TABLES) if name == "all" else [n.strip() for n in name.split(",") if n.strip()]
    else:
        names = list(name)
    if not names:
        raise ReproduceError(f"no table given; known tables: {', '.join(TABLES)} (or 'all')")
    for n in names:
        get_table(n)
    return names


def paper_rows(name: str) -> list:
    """The paper's numbers of a table as rows (cell, label, paper_mean, paper_std)."""
    return [{"table": name, "cell": c.key, "label": c.name, "paper_mean": c.paper_mean, "paper_std": c.paper_std}
            for c in get_table(name).cells]
