"""Segmentation metrics under named protocols (see `PROTOCOLS`).

Half of the balanced set has empty masks, so every number is labelled with how empty slices count.
Hard protocols take boolean masks with one sample (slice) per row of dim 0; every other dim is
flattened. The soft protocols (`paper` and the authors' variants of it) take sigmoid probabilities,
as the authors' Keras metrics did. Pixel counts are counted here in int64 (tests hold them equal to
MONAI's `get_confusion_matrix`); the Dice, IoU, sensitivity and specificity over them are MONAI's
(`compute_confusion_matrix_metric`, in float64); the smoothed soft sums are computed here. The pure
functions return Python floats (NaN where the protocol is undefined); `ProtocolAccumulator` gathers
per-slice sums over an epoch and reports every protocol at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ichseg.config_schema import check_keys
from ichseg.errors import IchsegError

# The authors' Keras `dice_coef` and `iou` add 100 to numerator and denominator.
PAPER_SMOOTH = 100.0
# Bumped whenever a metric key keeps its name but changes its meaning; records carry it, and
# readers refuse records of another version (version 1: `dice_paper` was thresholded, +1).
METRICS_VERSION = 2


@dataclass(frozen=True)
class Protocol:
    """A named metric protocol: its record keys (Dice then IoU; sensitivity then specificity for
    detection) and what exactly it averages."""

    name: str
    keys: tuple[str, ...]
    description: str
    stages: tuple[str, ...] = ("train", "val", "test")


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "paper",
            ("dice_paper", "iou_paper"),
            "Table 1's metric: soft Dice (2·Σpt + 100)/(Σp + Σt + 100) and IoU "
            "(Σpt + 100)/(Σp + Σt − Σpt + 100) on sigmoid probabilities over each whole batch, "
            "then the unweighted mean over the batches of the set; empty slices predicted "
            "near-empty count as near-perfect.",
        ),
        Protocol(
            "onebatch",
            ("dice_onebatch", "iou_onebatch"),
            "The paper protocol as the authors' validation computed it: Keras' validation_steps "
            "= n // batch, i.e. only the first n // batch batches of a fresh shuffle of the fold "
            "(one batch of 32 for a 57-slice fold), reshuffled every epoch.",
            stages=("val",),
        ),
        Protocol(
            "perimage",
            ("dice_perimage", "iou_perimage"),
            "The authors' test scoring (Keras evaluate with batch size 1): the soft Dice/IoU "
            "with smooth 100 of each slice alone, averaged over slices; an empty slice predicted "
            "near-empty scores about 1.",
        ),
        Protocol(
            "lesion",
            ("dice_lesion", "iou_lesion"),
            "Mean per-slice Dice/IoU over slices whose ground truth is non-empty, on thresholded "
            "masks; an empty prediction there scores 0, slices without ground truth are left out.",
        ),
        Protocol(
            "pooled",
            ("dice_pooled", "iou_pooled"),
            "One Dice/IoU from TP, FP and FN of the thresholded masks summed over every pixel of "
            "every slice.",
        ),
        Protocol(
            "detection",
            ("sensitivity_detection", "specificity_detection"),
            "Slice-level sensitivity/specificity: a slice is called positive when its predicted "
            "area exceeds min_area pixels (default 0: any pixel), truly positive when its ground "
            "truth is non-empty.",
        ),
    )
}
PROTOCOL_KEYS = tuple(k for p in PROTOCOLS.values() for k in p.keys)


def stage_keys(stage: str) -> tuple[str, ...]:
    """The metric keys a record holds for `stage` ("train", "val" or "test")."""
    return tuple(k for p in PROTOCOLS.values() if stage in p.stages for k in p.keys)


def _check_masks(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Raise IchsegError unless pred and target are boolean tensors of one shape (B, ...)."""
    if pred.dtype != torch.bool or target.dtype != torch.bool:
        raise IchsegError(
            f"metrics: expected boolean pred and target, found {pred.dtype} and {target.dtype}"
        )
    if pred.shape != target.shape or pred.ndim < 1:
        raise IchsegError(
            f"metrics: expected pred and target of one shape (B, ...), "
            f"found {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample pixel counts (tp, fp, tn, fn) as an int64 (B, 4) tensor, each row of (B, ...)
    one sample: what MONAI's `get_confusion_matrix` counts (tests hold the two equal), counted
    in int64 here with a few operations per batch, so a training step pays little for it."""
    _check_masks(pred, target)
    p = pred.flatten(1) if pred.ndim > 1 else pred.unsqueeze(1)
    t = target.flatten(1) if target.ndim > 1 else target.unsqueeze(1)
    if not p.numel():
        raise IchsegError(
            f"metrics: expected at least one sample of at least one pixel, found shape "
            f"{tuple(pred.shape)}"
        )
    tp = (p & t).sum(1)
    pred_area, target_area = p.sum(1), t.sum(1)
    fp, fn = pred_area - tp, target_area - tp
    tn = p.shape[1] - pred_area - fn
    return torch.stack([tp, fp, tn, fn], dim=1)


def _monai_metric(name: str, matrix: torch.Tensor) -> torch.Tensor:
    """MONAI's confusion-matrix metric `name` ("f1 score" = Dice, "threat score" = IoU, ...) per
    row of (tp, fp, tn, fn) counts, in float64; NaN where its denominator is 0."""
    from monai.metrics import compute_confusion_matrix_metric

    return compute_confusion_matrix_metric(name, matrix.double())


def soft_sums(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample (Σ p·t, Σ p, Σ t) as a float64 (B, 3) tensor; p in [0, 1], t boolean.

    ichseg's own: MONAI's `DiceLoss` scores one batch of probabilities at once, while the soft
    protocols re-batch per-slice sums (`onebatch`, `perimage`), and its smoothed Jaccard
    (2I + s)/(2U + s) is not the authors' `iou` (I + s)/(U + s).
    """
    if not prob.is_floating_point() or target.dtype != torch.bool:
        raise IchsegError(
            f"metrics: expected float probabilities and a boolean target, found {prob.dtype} "
            f"and {target.dtype}"
        )
    if prob.shape != target.shape or prob.ndim < 1:
        raise IchsegError(
            f"metrics: expected probabilities and target of one shape (B, ...), "
            f"found {tuple(prob.shape)} and {tuple(target.shape)}"
        )
    p = prob.float().flatten(1) if prob.ndim > 1 else prob.float().unsqueeze(1)
    t = target.flatten(1) if target.ndim > 1 else target.unsqueeze(1)
    inter = (p * t).sum(1)
    return torch.stack([inter, p.sum(1), t.sum(1, dtype=torch.float32)], dim=1).double()


def soft_dice(inter: float, prob_sum: float, target_sum: float, smooth: float) -> float:
    """(2·Σpt + s) / (Σp + Σt + s); NaN when that denominator is 0 (smooth 0, all empty)."""
    denom = prob_sum + target_sum + smooth
    return (2.0 * inter + smooth) / denom if denom else math.nan


def soft_iou(inter: float, prob_sum: float, target_sum: float, smooth: float) -> float:
    """(Σpt + s) / (Σp + Σt − Σpt + s), the authors' `iou`; NaN when the denominator is 0."""
    denom = prob_sum + target_sum - inter + smooth
    return (inter + smooth) / denom if denom else math.nan


def batch_mean(
    sums: torch.Tensor, batches: list[torch.Tensor], smooth: float = PAPER_SMOOTH
) -> tuple[float, float]:
    """Unweighted mean over `batches` (row indices into `sums`) of each batch's soft Dice, IoU.

    One batch's value pools its slices before dividing (Keras `dice_coef` on a batch); the set's
    value is the mean of the batch values, as Keras reports a metric over an epoch. NaN for no
    batches.
    """
    if not batches:
        return math.nan, math.nan
    dice, iou = [], []
    for rows in batches:
        inter, p, t = (float(v) for v in sums[rows].sum(0))
        dice.append(soft_dice(inter, p, t, smooth))
        iou.append(soft_iou(inter, p, t, smooth))
    return float(np.mean(dice)), float(np.mean(iou))


def keras_validation_batches(
    n: int, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """The rows Keras validated on with `validation_steps = n // batch_size`: that many full
    batches from a fresh shuffle of the n rows (the rest is never seen that epoch)."""
    order = torch.randperm(n, generator=generator)
    steps = n // batch_size
    return list(order[: steps * batch_size].split(batch_size)) if steps else []


def _lesion_mean(name: str, matrix: torch.Tensor) -> float:
    """Mean of the per-slice metric `name` over slices with ground truth; NaN when none."""
    tp, _, _, fn = matrix.unbind(1)
    has_gt = (tp + fn) > 0
    if not bool(has_gt.any()):
        return math.nan
    return float(_monai_metric(name, matrix[has_gt]).mean())


def lesion_dice(matrix: torch.Tensor) -> float:
    """Mean over slices with non-empty ground truth (tp+fn > 0) of 2tp/(2tp+fp+fn); else NaN."""
    return _lesion_mean("f1 score", matrix)


def lesion_iou(matrix: torch.Tensor) -> float:
    """Mean over slices with non-empty ground truth (tp+fn > 0) of tp/(tp+fp+fn); else NaN."""
    return _lesion_mean("threat score", matrix)


# What a collapsed network's validation shows (`collapsed`), in the words every output uses.
COLLAPSED = "no validation slice with bleeding gets a predicted pixel on its bleed"


def collapsed(val: dict) -> bool:
    """Whether a record's validation metrics say its network collapsed: on every validation slice
    with bleeding the thresholded prediction misses the bleed entirely (lesion Dice exactly 0;
    undefined without such slices). A network that collapsed to empty masks (e.g. a far too high
    learning rate with batch norm) keeps a finite loss and a paper-protocol Dice near 0.7, which
    the empty slices earn it."""
    return val.get("dice_lesion") == 0


def pooled_dice(matrix: torch.Tensor) -> float:
    """2Σtp/(2Σtp+Σfp+Σfn) with sums over all slices and pixels; NaN when the denominator is 0."""
    return float(_monai_metric("f1 score", matrix.sum(0)))


def pooled_iou(matrix: torch.Tensor) -> float:
    """Σtp/(Σtp+Σfp+Σfn) with sums over all slices and pixels; NaN when the denominator is 0."""
    return float(_monai_metric("threat score", matrix.sum(0)))


def detection_rates(
    pred_area: torch.Tensor, target_area: torch.Tensor, min_area: int = 0
) -> tuple[float, float]:
    """Slice-level (sensitivity, specificity): MONAI's on the slices as the pixels of one sample.

    A slice is predicted positive when pred_area > min_area (strictly greater, so the default 0
    means "any predicted pixel"), truly positive when target_area > 0. Sensitivity is NaN
    without positive slices, specificity NaN without negative slices.
    """
    slices = confusion_matrix((pred_area > min_area).unsqueeze(0), (target_area > 0).unsqueeze(0))
    sens = float(_monai_metric("sensitivity", slices))
    spec = float(_monai_metric("specificity", slices))
    return sens, spec


class ProtocolAccumulator:
    """Collect per-slice sums over batches and compute every protocol of `PROTOCOLS`.

    `update` keeps, per slice and on the batch's device without synchronising, the soft sums
    (Σpt, Σp, Σt) of the probabilities and the confusion matrix of the masks thresholded at
    `threshold`; `compute` concatenates once. The paper protocol is the unweighted mean over the
    batches given to `update` of each batch's soft value, as Keras reports a metric that returns
    one scalar per batch: it depends on how the set was batched.
    """

    def __init__(self, min_area: int = 0, threshold: float = 0.5) -> None:
        check_keys({"model.module.threshold": threshold})
        self.min_area = int(min_area)
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._counts: list[torch.Tensor] = []
        self._sums: list[torch.Tensor] = []
        self.batch_sizes: list[int] = []

    def update(self, prob: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: sigmoid probabilities (B, ...) and boolean ground truth (B, ...)."""
        prob, target = prob.detach(), target.detach()
        self._sums.append(soft_sums(prob, target))
        self._counts.append(confusion_matrix(prob > self.threshold, target))
        self.batch_sizes.append(int(prob.shape[0]))

    def _gather(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 4) int64 (tp, fp, tn, fn) and (N, 3) float64 soft sums, on the CPU, in order."""
        if not self._counts:
            raise IchsegError("ProtocolAccumulator: compute() or per_sample() before any update()")
        return torch.cat([c.cpu() for c in self._counts]), torch.cat([s.cpu() for s in self._sums])

    def per_sample(self) -> dict[str, np.ndarray]:
        """Per-slice int64 tp, fp, fn, pred_area, target_area and float64 soft_dice (smooth
        100), in update order."""
        counts, sums = self._gather()
        tp, fp, _, fn = counts.numpy().T
        inter, p, t = sums.numpy().T
        dice = (2 * inter + PAPER_SMOOTH) / (p + t + PAPER_SMOOTH)
        return {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "pred_area": tp + fp,
            "target_area": tp + fn,
            "soft_dice": dice,
        }

    def compute(self, keras_validation: tuple[int, torch.Generator] | None = None) -> dict:
        """Every protocol's keys as floats (NaN where a protocol is undefined).

        `keras_validation=(batch_size, generator)` adds the `onebatch` protocol: the paper
        protocol over the batches Keras' `validation_steps = n // batch_size` would have drawn.
        """
        counts, sums = self._gather()
        tp, fp, _, fn = counts.unbind(1)
        rows = torch.arange(len(sums))
        scores = {"paper": batch_mean(sums, list(rows.split(self.batch_sizes)))}
        if keras_validation is not None:
            batch_size, generator = keras_validation
            drawn = keras_validation_batches(len(sums), batch_size, generator)
            scores["onebatch"] = batch_mean(sums, drawn)
        scores["perimage"] = batch_mean(sums, list(rows.split(1)))
        scores["lesion"] = lesion_dice(counts), lesion_iou(counts)
        scores["pooled"] = pooled_dice(counts), pooled_iou(counts)
        scores["detection"] = detection_rates(tp + fp, tp + fn, self.min_area)
        return {
            key: value
            for name, values in scores.items()
            for key, value in zip(PROTOCOLS[name].keys, values, strict=True)
        }
