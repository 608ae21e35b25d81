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

from ichseg.errors import IchsegError
from ichseg.metrics import PROTOCOLS as METRIC_PROTOCOLS
from ichseg.metrics import collapsed
from ichseg.models.unet import batch_norm_mode
from ichseg.sweeps.model import Job, Sweep


@dataclass(frozen=True)
class Protocol:
    """A Table 1 protocol: which record keys hold its IoU and Dice, and what they average."""

    name: str
    iou: str
    dice: str
    description: str
    # Keys of the train columns: the protocol's own, or the paper protocol's for validation-only
    # protocols (Keras reported one running training value whatever the validation did).
    train_iou: str
    train_dice: str


def _table_protocol(name: str, note: str = "") -> Protocol:
    """The Table 1 view of `ichseg.metrics.PROTOCOLS[name]`."""
    metric = METRIC_PROTOCOLS[name]
    dice, iou = metric.keys
    train = metric if "train" in metric.stages else METRIC_PROTOCOLS["paper"]
    if train is not metric:
        note = f"{note} Train columns: the {train.name} protocol.".strip()
    description = f"{name}: {metric.description} {note}".strip()
    return Protocol(name, iou, dice, description, train.keys[1], train.keys[0])


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        _table_protocol("paper"),
        _table_protocol("onebatch"),
        _table_protocol("lesion", "Comparable with the dataset paper's Dice."),
        _table_protocol("pooled"),
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
# The network class has fixed 3x3 convolutions and 2x2 max pooling (ichseg/models/unet.py).
KERNEL = "(3x3)"
POOL = "(2x2)"
# nnU-Net's 2-d plans: 3x3 convolutions, stride-2 convolutions instead of pooling.
NNUNET_POOL = "(stride-2 conv)"
DISPLAY_NAMES = {
    "unet": "U-Net",
    "unet_plain": "U-Net (no BN)",
    "dunet": "D-Unet",
    "nnunet": "nnU-Net (own final checkpoint)",
}


def protocol(name: str) -> Protocol:
    """The protocol called `name`; IchsegError listing the known ones otherwise."""
    if name not in PROTOCOLS:
        raise IchsegError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def display_name(model: str) -> str:
    """The paper's spelling of an architecture name."""
    return DISPLAY_NAMES.get(model, model)


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


@dataclass(frozen=True)
class ArchInfo:
    """The architecture columns of Table 1, read from the jobs' configs."""

    model: str
    filters: tuple[int, ...]
    dropout: float
    batch_size: int
    batch_norm: str  # none, second or both (see ichseg.models.unet), or the norm in words
    conflicts: tuple[str, ...]  # config keys whose value differs between this model's folds
    kernel: str = KERNEL
    pool: str = POOL

    @property
    def filters_text(self) -> str:
        """Filters per layer as the paper writes them, e.g. (64,128,256,512,1024)."""
        return "(" + ",".join(str(f) for f in self.filters) + ")"

    @property
    def batch_norm_text(self) -> str:
        """Where the blocks have batch norm, in words."""
        return BATCH_NORM_TEXT.get(self.batch_norm, self.batch_norm)

    @property
    def dropout_text(self) -> str:
        """Dropout factor, NA when the model has none (as in the paper)."""
        return "NA" if not self.dropout else f"{self.dropout:g}"


BATCH_NORM_TEXT = {
    "none": "none",
    "second": "after the second convolution of every block",
    "both": "after both convolutions of every block",
}
# The network's settings sit under model.module (the Lightning module's arguments); model.net is
# accepted too, for configs that nest the network separately.
NET_SECTIONS = ("model.module", "model.net")
NET_KEYS = ("filters", "dropout", "batch_norm")
# Keys that must agree across one model's folds for their mean to describe one configuration.
CONSISTENCY_KEYS = (
    *(f"{s}.{k}" for s in NET_SECTIONS for k in NET_KEYS),
    "data.batch_size",
    "data.size",
    "data.split",
    "data.n_folds",
    "data.seed",
    "trainer.max_epochs",
    "checkpoint_every",
)


def net_value(job: Job, name: str) -> Any:
    """A network setting (`filters`, `dropout`, `batch_norm`) from the first section that has it."""
    for section in NET_SECTIONS:
        value = job.get(f"{section}.{name}", None)
        if value is not None:
            return value
    raise IchsegError(
        f"{job.source}: config key '{NET_SECTIONS[0]}.{name}' (or '{NET_SECTIONS[1]}.{name}') "
        "is missing"
    )


def arch_info(sweep: Sweep, model: str) -> ArchInfo | None:
    """Architecture columns of `model` from its first configured job; None when none has one."""
    jobs = [j for j in sweep.jobs_of(model) if j.config]
    if not jobs:
        return None
    first = jobs[0]
    conflicts = tuple(k for k in CONSISTENCY_KEYS if len({repr(j.get(k, None)) for j in jobs}) > 1)
    plans = first.get("model.nnunet", None)
    if plans is not None:
        norms = ", ".join(str(n) for n in plans.get("normalization", [])) or "?"
        return ArchInfo(
            model=model,
            filters=tuple(int(f) for f in first.get("model.module.filters")),
            dropout=0.0,
            batch_size=int(plans.get("batch_size") or 0),
            batch_norm=f"none: instance norm after every convolution; input {norms}",
            conflicts=conflicts,
            pool=NNUNET_POOL,
        )
    return ArchInfo(
        model=model,
        filters=tuple(int(f) for f in net_value(first, "filters")),
        dropout=float(net_value(first, "dropout") or 0.0),
        batch_size=int(first.get("data.batch_size")),
        batch_norm=batch_norm_mode(net_value(first, "batch_norm")),
        conflicts=conflicts,
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
    epoch: int
    protocol: str
    train_iou: Stat
    train_dice: Stat
    val_iou: Stat
    val_dice: Stat
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
    p = protocol(protocol_name)
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
                    epoch=epoch,
                    protocol=p.name,
                    train_iou=stat("train", p.train_iou),
                    train_dice=stat("train", p.train_dice),
                    val_iou=stat("val", p.iou),
                    val_dice=stat("val", p.dice),
                    folds=folds,
                    collapsed=collapsed_folds(sweep, model, epoch),
                )
            )
    return rows


@dataclass(frozen=True)
class DetectionRow:
    """Validation detection sensitivity/specificity of one architecture x epoch."""

    model: str
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
                        model, epoch, Stat.of(list(sens.values())), Stat.of(list(spec.values())), n
                    )
                )
    return rows


def undefined_values(sweep: Sweep, protocol_name: str) -> list[str]:
    """Records whose metric under this protocol is null (e.g. lesion Dice on a fold w/o lesions)."""
    p = protocol(protocol_name)
    out = []
    for job in sweep.jobs:
        for r in job.records:
            for split, keys in (("train", (p.train_iou, p.train_dice)), ("val", (p.iou, p.dice))):
                for key in keys:
                    if r.get(split) and r[split].get(key) is None:
                        out.append(f"{job.name} epoch {r['epoch']} {split}/{key}")
    return out
