"""Segmentation metrics under four named protocols (see DESIGN.md, "Metrics: say which protocol").

Half of the balanced set has empty masks, so every number is labelled with how empty slices
count. Inputs are boolean tensors with one sample (slice) per row of dim 0; every other dim is
flattened. The pure functions return Python floats (NaN where the protocol is undefined);
`ProtocolAccumulator` gathers per-slice counts over an epoch and reports all protocols at once.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ichseg.errors import IchsegError

PROTOCOL_KEYS = (
    "dice_paper",
    "iou_paper",
    "dice_lesion",
    "iou_lesion",
    "dice_pooled",
    "iou_pooled",
    "sensitivity_detection",
    "specificity_detection",
)

PROTOCOLS = {
    "paper": "Keras-style smoothed Dice/IoU over each whole batch, (2·TP+1)/(|P|+|T|+1), then "
    "the unweighted mean over batches; empty slices count as near-perfect (the paper's Table 1).",
    "lesion": "Mean per-slice Dice/IoU over slices whose ground truth is non-empty; an empty "
    "prediction there scores 0, slices without ground truth are left out.",
    "pooled": "One Dice/IoU from TP, FP and FN summed over every pixel of every slice.",
    "detection": "Slice-level sensitivity/specificity: a slice is called positive when its "
    "predicted area exceeds min_area pixels (default 0: any pixel), truly positive when its "
    "ground truth is non-empty.",
}


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


def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (tp, fp, fn) as int64 tensors of shape (B,), counting pixels of each row."""
    _check_masks(pred, target)
    # flatten(1) rather than reshape(B, -1): the latter fails on an empty batch.
    p = pred.flatten(1) if pred.ndim > 1 else pred.unsqueeze(1)
    t = target.flatten(1) if target.ndim > 1 else target.unsqueeze(1)
    tp = (p & t).sum(1, dtype=torch.int64)
    fp = (p & ~t).sum(1, dtype=torch.int64)
    fn = (~p & t).sum(1, dtype=torch.int64)
    return tp, fp, fn


def _smoothed_dice(tp: int, pred_area: int, target_area: int, smooth: float) -> float:
    """(2·tp + s) / (|P| + |T| + s) on totals; NaN when that denominator is 0 (smooth=0)."""
    denom = pred_area + target_area + smooth
    return (2.0 * tp + smooth) / denom if denom else math.nan


def _smoothed_iou(tp: int, pred_area: int, target_area: int, smooth: float) -> float:
    """(tp + s) / (|P ∪ T| + s) on totals; NaN when that denominator is 0 (smooth=0)."""
    denom = pred_area + target_area - tp + smooth
    return (tp + smooth) / denom if denom else math.nan


def paper_dice(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> float:
    """Paper protocol for ONE batch: (2·Σtp + s)/(Σ|pred| + Σ|target| + s) over all its pixels.

    All slices of the batch are pooled before dividing, so a batch of empty predictions on empty
    targets scores s/s = 1. Epoch values average this over batches (`ProtocolAccumulator`).
    """
    tp, fp, fn = confusion_counts(pred, target)
    tp_sum = int(tp.sum())
    return _smoothed_dice(tp_sum, tp_sum + int(fp.sum()), tp_sum + int(fn.sum()), smooth)


def paper_iou(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> float:
    """Paper protocol for ONE batch: (Σtp + s)/(Σ|pred ∪ target| + s) over all its pixels."""
    tp, fp, fn = confusion_counts(pred, target)
    tp_sum = int(tp.sum())
    return _smoothed_iou(tp_sum, tp_sum + int(fp.sum()), tp_sum + int(fn.sum()), smooth)


def _lesion_mean(numer: torch.Tensor, denom: torch.Tensor, has_gt: torch.Tensor) -> float:
    """Mean of numer/denom over rows with ground truth; NaN when there are none."""
    if not bool(has_gt.any()):
        return math.nan
    return float((numer[has_gt].double() / denom[has_gt].double()).mean())


def lesion_dice(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> float:
    """Mean over slices with non-empty ground truth (tp+fn > 0) of 2tp/(2tp+fp+fn); else NaN."""
    return _lesion_mean(2 * tp, 2 * tp + fp + fn, (tp + fn) > 0)


def lesion_iou(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> float:
    """Mean over slices with non-empty ground truth (tp+fn > 0) of tp/(tp+fp+fn); else NaN."""
    return _lesion_mean(tp, tp + fp + fn, (tp + fn) > 0)


def pooled_dice(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> float:
    """2Σtp/(2Σtp+Σfp+Σfn) with sums over all slices and pixels; NaN when the denominator is 0."""
    t, p, n = int(tp.sum()), int(fp.sum()), int(fn.sum())
    denom = 2 * t + p + n
    return 2 * t / denom if denom else math.nan


def pooled_iou(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> float:
    """Σtp/(Σtp+Σfp+Σfn) with sums over all slices and pixels; NaN when the denominator is 0."""
    t, p, n = int(tp.sum()), int(fp.sum()), int(fn.sum())
    denom = t + p + n
    return t / denom if denom else math.nan


def detection_rates(
    pred_area: torch.Tensor, target_area: torch.Tensor, min_area: int = 0
) -> tuple[float, float]:
    """Slice-level (sensitivity, specificity).

    A slice is predicted positive when pred_area > min_area (strictly greater, so the default 0
    means "any predicted pixel"), truly positive when target_area > 0. Sensitivity is NaN
    without positive slices, specificity NaN without negative slices.
    """
    called = pred_area > min_area
    truth = target_area > 0
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    sens = int((called & truth).sum()) / n_pos if n_pos else math.nan
    spec = int((~called & ~truth).sum()) / n_neg if n_neg else math.nan
    return sens, spec


class ProtocolAccumulator:
    """Collect per-slice counts over batches and compute every protocol of `PROTOCOL_KEYS`.

    `update` keeps int64 (tp, fp, fn) per slice on the batch's device without synchronising;
    `compute` concatenates once. The paper protocol is the unweighted mean over batches of the
    per-batch smoothed value, as tf.keras reports a metric that returns one scalar per batch
    (standalone Keras ≤ 2.3 weighted batches by size instead; the two differ only through a
    smaller last batch).
    """

    def __init__(self, smooth: float = 1.0, min_area: int = 0) -> None:
        self.smooth = float(smooth)
        self.min_area = int(min_area)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._counts: list[torch.Tensor] = []
        self._batch_sizes: list[int] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of boolean masks (B, ...)."""
        tp, fp, fn = confusion_counts(pred.detach(), target.detach())
        self._counts.append(torch.stack([tp, fp, fn], dim=1))
        self._batch_sizes.append(int(pred.shape[0]))

    def _all_counts(self) -> torch.Tensor:
        """(N, 3) int64 CPU tensor of (tp, fp, fn) for every slice seen."""
        if not self._counts:
            raise IchsegError("ProtocolAccumulator: compute() or per_sample() before any update()")
        return torch.cat([c.cpu() for c in self._counts])

    def per_sample(self) -> dict[str, np.ndarray]:
        """Per-slice int64 arrays tp, fp, fn, pred_area, target_area in update order."""
        tp, fp, fn = self._all_counts().numpy().T
        return {"tp": tp, "fp": fp, "fn": fn, "pred_area": tp + fp, "target_area": tp + fn}

    def compute(self) -> dict[str, float]:
        """All eight `PROTOCOL_KEYS` as floats (NaN where a protocol is undefined)."""
        counts = self._all_counts()
        tp, fp, fn = counts.unbind(1)
        dice_b, iou_b = [], []
        for chunk in counts.split(self._batch_sizes):
            t, p, n = (int(v) for v in chunk.sum(0))
            dice_b.append(_smoothed_dice(t, t + p, t + n, self.smooth))
            iou_b.append(_smoothed_iou(t, t + p, t + n, self.smooth))
        sens, spec = detection_rates(tp + fp, tp + fn, self.min_area)
        return {
            "dice_paper": float(np.mean(dice_b)),
            "iou_paper": float(np.mean(iou_b)),
            "dice_lesion": lesion_dice(tp, fp, fn),
            "iou_lesion": lesion_iou(tp, fp, fn),
            "dice_pooled": pooled_dice(tp, fp, fn),
            "iou_pooled": pooled_iou(tp, fp, fn),
            "sensitivity_detection": sens,
            "specificity_detection": spec,
        }
