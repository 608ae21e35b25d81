"""Table 1 of the paper from checkpoint records: one row per architecture x checkpoint epoch.

Numbers are means over the folds that have a record at that epoch; the validation std is the
sample standard deviation (ddof=1) over those folds. The same table is built for each metric
protocol, because "Dice" on a set where half the masks are empty means nothing until the
empty-mask policy is named. `ichseg.report.render` writes the rows as Markdown, LaTeX and CSV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichseg.checkpoint import module_net_config
from ichseg.errors import IchsegError, first_line
from ichseg.metrics import PROTOCOLS as METRIC_PROTOCOLS
from ichseg.metrics import collapsed
from ichseg.models.network import (
    NET_KEY,
    architecture,
    build_on_meta,
    flops_per_slice,
    parameter_count,
)
from ichseg.sweeps.model import ICHSEG, Sweep


@dataclass(frozen=True)
class Table1Columns:
    """How Table 1 reads a metric protocol: which record keys hold its IoU and Dice, and what
    they average."""

    name: str
    iou: str
    dice: str
    description: str
    # Keys of the train columns: the protocol's own, or the paper protocol's for validation-only
    # protocols (Keras reported one running training value whatever the validation did).
    train_iou: str
    train_dice: str


def _table1_columns(name: str, note: str = "") -> Table1Columns:
    """The Table 1 view of `ichseg.metrics.PROTOCOLS[name]`."""
    metric = METRIC_PROTOCOLS[name]
    dice, iou = metric.keys
    train = metric if "train" in metric.stages else METRIC_PROTOCOLS["paper"]
    if train is not metric:
        note = f"{note} Train columns: the {train.name} protocol.".strip()
    description = f"{name}: {metric.description} {note}".strip()
    return Table1Columns(name, iou, dice, description, train.keys[1], train.keys[0])


TABLE1_COLUMNS: dict[str, Table1Columns] = {
    p.name: p
    for p in (
        _table1_columns("paper"),
        _table1_columns("onebatch"),
        _table1_columns("lesion", "Comparable with the dataset paper's Dice."),
        _table1_columns("pooled"),
    )
}
DETECTION_KEYS = METRIC_PROTOCOLS["detection"].keys
DETECTION_DESCRIPTION = f"detection: {METRIC_PROTOCOLS['detection'].description}"
TRAIN_MEANING = (
    "Train = the running metric over each epoch's augmented training batches (model in training "
    "mode, dropout on), as Keras reported it, averaged over folds; not a re-scoring of the "
    "training set."
)
STD_MEANING = "Std = sample standard deviation (ddof=1) over the folds present (n_folds)."


def table1_columns(name: str) -> Table1Columns:
    """The Table 1 columns of the protocol called `name`; IchsegError listing the known ones."""
    if name not in TABLE1_COLUMNS:
        raise IchsegError(f"unknown protocol {name!r}; expected one of {', '.join(TABLE1_COLUMNS)}")
    return TABLE1_COLUMNS[name]


@dataclass(frozen=True)
class Stat:
    """Mean and sample std of per-fold values (NaN where undefined) and how many were defined."""

    mean: float
    std: float
    n: int
    missing: int = 0  # folds whose value is null, NaN or infinite

    @classmethod
    def of(cls, values: list[float | None]) -> Stat:
        """Mean/std (ddof=1) over the folds; undefined (NaN) when any fold's value is not
        finite, so that no mean over a subset of the folds passes for one over all of them."""
        finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
        missing = len(values) - int(finite.size)
        if missing:
            return cls(math.nan, math.nan, int(finite.size), missing)
        mean = float(finite.mean()) if finite.size else math.nan
        std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        return cls(mean, std, int(finite.size))


NA = "NA"
# Keys that must agree across one model's folds for their mean to describe one configuration.
CONSISTENCY_KEYS = (
    "model.module.net",
    "data.batch_size",
    "data.size",
    "data.split",
    "data.n_folds",
    "data.seed",
    "trainer.max_epochs",
    "checkpoint_every",
)


@dataclass(frozen=True)
class ArchInfo:
    """Table 1's architecture columns of one model: what its network says of itself
    (`ichseg.models.network.architecture`), what its config's `model.architecture` adds, and the
    parameters and FLOPs counted on the network built from its config."""

    model: str
    filters: str
    kernel: str
    pool: str
    dropout: str
    batch_norm: str
    batch_size: str
    parameters: int | None
    flops_per_slice: int | None  # forward FLOPs of one FLOPS_SIZE x FLOPS_SIZE slice
    network: str  # the network's _target_, or what trained it
    conflicts: tuple[str, ...]  # config keys whose value differs between this model's folds
    # Why parameters and FLOPs are not counted, when they are not.
    uncounted: str = ""

    @property
    def parameters_text(self) -> str:
        """Parameter count in millions, e.g. 31.03M; NA when not counted."""
        return NA if self.parameters is None else f"{self.parameters / 1e6:.2f}M"

    @property
    def flops_text(self) -> str:
        """GFLOPs per slice, e.g. 96.18; NA when not counted."""
        return NA if self.flops_per_slice is None else f"{self.flops_per_slice / 1e9:.2f}"


def _cell(value: Any) -> str:
    """An architecture value as Table 1 prints it: lists as (a,b,c), an empty text as "", and
    NA only where neither the network nor its config says anything (None); a value of 0 or
    False is printed as said."""
    if value is None:
        return NA
    if value == "":
        return '""'
    if isinstance(value, list | tuple):
        return "(" + ",".join(_cell(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def arch_info(sweep: Sweep, model: str) -> ArchInfo | None:
    """Architecture columns of `model` from its first configured job; None when none has one."""
    jobs = [j for j in sweep.jobs_of(model) if j.config]
    if not jobs:
        return None
    first = jobs[0]
    conflicts = tuple(k for k in CONSISTENCY_KEYS if len({repr(j.get(k, None)) for j in jobs}) > 1)
    said = dict(first.get("model.architecture", None) or {})
    node = module_net_config(first.get("model.module", None) or {})
    parameters = flops = None
    uncounted = ""
    if first.trained_by != ICHSEG:
        network, uncounted = first.trained_by, f"trained by {first.trained_by}, not built here"
    else:
        network = str(node.get("_target_", NA)) if node else NA
        try:
            net = build_on_meta(node, f"{first.source or first.name}: {NET_KEY}")
            said = architecture(net, said)
            parameters, flops = parameter_count(net), flops_per_slice(net)
        except IchsegError as err:
            uncounted = first_line(err)
    batch_size = first.get("data.batch_size", None)
    return ArchInfo(
        model=model,
        filters=_cell(said.get("filters")),
        kernel=_cell(said.get("kernel")),
        pool=_cell(said.get("pool")),
        dropout=_cell(said.get("dropout")),
        batch_norm=_cell(said.get("batch_norm")),
        batch_size=_cell(said.get("batch_size", batch_size)),
        parameters=parameters,
        flops_per_slice=flops,
        network=network,
        conflicts=conflicts,
        uncounted=uncounted,
    )


def fold_values(
    sweep: Sweep, model: str, epoch: int, split: str, key: str
) -> dict[int, float | None]:
    """Per-fold value of metric `key` in the `split` ("train"/"val") dict of the epoch's records;
    a fold whose record has no `split` metrics at all (nnU-Net's: no training-batch metrics) is
    left out rather than counted as undefined."""
    out: dict[int, float | None] = {}
    for job in sweep.jobs_of(model):
        record = job.record(epoch)
        if record is not None and record.get(split):
            value = record[split].get(key)
            out[job.fold] = None if value is None else float(value)
    return out


def collapsed_folds(sweep: Sweep, model: str, epoch: int) -> tuple[int, ...]:
    """The folds whose record at `epoch` says the network had collapsed."""
    return tuple(
        job.fold
        for job in sweep.jobs_of(model)
        if (record := job.record(epoch)) is not None and collapsed(record.get("val") or {})
    )


@dataclass(frozen=True)
class TableRow:
    """One row of Table 1 under one protocol."""

    model: str
    name: str  # how the report names the model (`Sweep.names`)
    epoch: int
    protocol: str
    train_iou: Stat
    train_dice: Stat
    val_iou: Stat
    val_dice: Stat
    # Validation lesion-protocol Dice whatever the row's protocol: whether the network learned.
    val_lesion_dice: Stat
    folds: tuple[int, ...]  # folds with a record at this epoch
    collapsed: tuple[int, ...] = ()  # folds whose network had collapsed (ichseg.metrics)

    @property
    def n_folds(self) -> int:
        """How many folds have a record at this epoch."""
        return len(self.folds)

    @property
    def score(self) -> float:
        """The selection score: mean of the mean validation IoU and mean validation Dice."""
        return (self.val_iou.mean + self.val_dice.mean) / 2


def table_rows(sweep: Sweep, protocol_name: str) -> list[TableRow]:
    """Table 1 rows under one protocol, architectures in sweep order, epochs ascending."""
    p = table1_columns(protocol_name)
    rows = []
    for model in sweep.models:
        for epoch in sweep.epochs(model):
            folds = tuple(sorted(fold_values(sweep, model, epoch, "val", "loss")))
            if not folds:
                continue

            def stat(split: str, key: str, model: str = model, epoch: int = epoch) -> Stat:
                return Stat.of(list(fold_values(sweep, model, epoch, split, key).values()))

            rows.append(
                TableRow(
                    model=model,
                    name=sweep.names.get(model, model),
                    epoch=epoch,
                    protocol=p.name,
                    train_iou=stat("train", p.train_iou),
                    train_dice=stat("train", p.train_dice),
                    val_iou=stat("val", p.iou),
                    val_dice=stat("val", p.dice),
                    val_lesion_dice=stat("val", TABLE1_COLUMNS["lesion"].dice),
                    folds=folds,
                    collapsed=collapsed_folds(sweep, model, epoch),
                )
            )
    return rows


@dataclass(frozen=True)
class DetectionRow:
    """Validation detection sensitivity/specificity of one architecture x epoch."""

    model: str
    name: str
    epoch: int
    sensitivity: Stat
    specificity: Stat
    n_folds: int


def detection_rows(sweep: Sweep) -> list[DetectionRow]:
    """Detection rows for every architecture x recorded epoch."""
    rows = []
    for model in sweep.models:
        for epoch in sweep.epochs(model):
            sens = fold_values(sweep, model, epoch, "val", DETECTION_KEYS[0])
            spec = fold_values(sweep, model, epoch, "val", DETECTION_KEYS[1])
            n = len(fold_values(sweep, model, epoch, "val", "loss"))
            if n:
                rows.append(
                    DetectionRow(
                        model,
                        sweep.names.get(model, model),
                        epoch,
                        Stat.of(list(sens.values())),
                        Stat.of(list(spec.values())),
                        n,
                    )
                )
    return rows


def undefined_values(sweep: Sweep, protocol_name: str) -> list[str]:
    """Records whose metric under this protocol is null (e.g. lesion Dice on a fold w/o lesions)."""
    p = table1_columns(protocol_name)
    out = []
    for job in sweep.jobs:
        for r in job.records:
            for split, keys in (("train", (p.train_iou, p.train_dice)), ("val", (p.iou, p.dice))):
                for key in keys:
                    if r.get(split) and r[split].get(key) is None:
                        out.append(f"{job.name} epoch {r['epoch']} {split}/{key}")
    return out
