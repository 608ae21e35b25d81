"""Metric protocols cross-checked against MONAI, scikit-learn and direct numpy formulas.

MONAI's behaviour on empty ground truth (checked on monai 1.6): `DiceMetric` and `MeanIoU` with
`ignore_empty=True` return NaN for a sample whose ground truth is empty, whatever the
prediction; with `ignore_empty=False` they return 1 when the prediction is empty too, else 0.
The lesion protocol is therefore the nanmean of MONAI's `ignore_empty=True` per-sample values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, MeanIoU
from sklearn.metrics import confusion_matrix, f1_score, jaccard_score, recall_score

from ichseg.errors import IchsegError
from ichseg.metrics import (
    PROTOCOL_KEYS,
    PROTOCOLS,
    ProtocolAccumulator,
    confusion_counts,
    detection_rates,
    lesion_dice,
    lesion_iou,
    paper_dice,
    paper_iou,
    pooled_dice,
    pooled_iou,
)


def random_masks(n: int, seed: int, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, size, size) pred/target with varied densities and the empty corner cases."""
    g = torch.Generator().manual_seed(seed)
    density = torch.rand(n, 1, 1, 1, generator=g) * 0.4
    target = torch.rand(n, 1, size, size, generator=g) < density
    # Predictions overlap the target partially, plus some noise of their own.
    keep = torch.rand(n, 1, size, size, generator=g) < 0.7
    noise = torch.rand(n, 1, size, size, generator=g) < density / 3
    pred = (target & keep) | noise
    target[0] = False  # empty target, non-empty prediction
    pred[0, 0, 0, 0] = True
    pred[1] = False  # empty prediction, non-empty target
    target[1, 0, 2:5, 2:5] = True
    pred[2] = False  # both empty
    target[2] = False
    target[3, 0, 0, 0] = True  # one-pixel lesion
    return pred, target


PRED, TARGET = random_masks(24, seed=7)


def test_confusion_counts_against_numpy():
    tp, fp, fn = confusion_counts(PRED, TARGET)
    p = PRED.numpy().reshape(len(PRED), -1)
    t = TARGET.numpy().reshape(len(TARGET), -1)
    assert tp.dtype == fp.dtype == fn.dtype == torch.int64
    np.testing.assert_array_equal(tp.numpy(), (p & t).sum(1))
    np.testing.assert_array_equal(fp.numpy(), (p & ~t).sum(1))
    np.testing.assert_array_equal(fn.numpy(), (~p & t).sum(1))
    channels_last = PRED.float().to(memory_format=torch.channels_last) > 0
    assert torch.equal(confusion_counts(channels_last, TARGET)[0], tp)


def test_lesion_matches_monai_ignore_empty():
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=True)
    m_dice = dice(PRED.float(), TARGET.float()).flatten().numpy()
    m_iou = iou(PRED.float(), TARGET.float()).flatten().numpy()
    has_gt = TARGET.flatten(1).any(1).numpy()
    # MONAI: NaN exactly where the ground truth is empty, whatever was predicted.
    np.testing.assert_array_equal(np.isnan(m_dice), ~has_gt)
    np.testing.assert_array_equal(np.isnan(m_iou), ~has_gt)
    assert m_dice[1] == 0.0  # empty prediction on a lesion scores 0
    tp, fp, fn = confusion_counts(PRED, TARGET)
    assert lesion_dice(tp, fp, fn) == pytest.approx(np.nanmean(m_dice), abs=1e-6)
    assert lesion_iou(tp, fp, fn) == pytest.approx(np.nanmean(m_iou), abs=1e-6)


def test_pooled_matches_sklearn():
    y_true = TARGET.numpy().ravel()
    y_pred = PRED.numpy().ravel()
    tp, fp, fn = confusion_counts(PRED, TARGET)
    assert pooled_dice(tp, fp, fn) == pytest.approx(f1_score(y_true, y_pred), abs=1e-12)
    assert pooled_iou(tp, fp, fn) == pytest.approx(jaccard_score(y_true, y_pred), abs=1e-12)


@pytest.mark.parametrize("min_area", [0, 3])
def test_detection_matches_sklearn(min_area):
    tp, fp, fn = confusion_counts(PRED, TARGET)
    pred_area, target_area = tp + fp, tp + fn
    truth = (target_area > 0).numpy().astype(int)
    called = (pred_area > min_area).numpy().astype(int)
    tn_, fp_, fn_, tp_ = confusion_matrix(truth, called, labels=[0, 1]).ravel()
    sens, spec = detection_rates(pred_area, target_area, min_area)
    assert sens == pytest.approx(recall_score(truth, called, pos_label=1))
    assert spec == pytest.approx(recall_score(truth, called, pos_label=0))
    assert sens == pytest.approx(tp_ / (tp_ + fn_)) and spec == pytest.approx(tn_ / (tn_ + fp_))


def test_detection_threshold_is_strict():
    sens, spec = detection_rates(torch.tensor([2, 3, 0, 3]), torch.tensor([5, 5, 0, 0]), 2)
    # Area 2 is not > 2: a missed lesion; area 3 on an empty slice: a false call.
    assert (sens, spec) == (0.5, 0.5)


def test_paper_against_numpy_formula():
    p = PRED.numpy().ravel().astype(np.float64)
    t = TARGET.numpy().ravel().astype(np.float64)
    for s in (1.0, 1e-5):
        inter = (p * t).sum()
        want_dice = (2 * inter + s) / (p.sum() + t.sum() + s)
        want_iou = (inter + s) / (p.sum() + t.sum() - inter + s)
        assert paper_dice(PRED, TARGET, smooth=s) == pytest.approx(want_dice, rel=1e-12)
        assert paper_iou(PRED, TARGET, smooth=s) == pytest.approx(want_iou, rel=1e-12)


def test_paper_empty_batch_scores_exactly_one():
    empty = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    # The documented "near-perfect" effect: smooth/smooth on empty slices.
    assert paper_dice(empty, empty) == 1.0 and paper_iou(empty, empty) == 1.0
    assert math.isnan(paper_dice(empty, empty, smooth=0.0))
    # ...while lesion and pooled protocols have nothing to score.
    tp, fp, fn = confusion_counts(empty, empty)
    assert math.isnan(lesion_dice(tp, fp, fn)) and math.isnan(lesion_iou(tp, fp, fn))
    assert math.isnan(pooled_dice(tp, fp, fn)) and math.isnan(pooled_iou(tp, fp, fn))
    sens, spec = detection_rates(tp + fp, tp + fn)
    assert math.isnan(sens) and spec == 1.0


def test_accumulator_over_uneven_batches():
    acc = ProtocolAccumulator(smooth=1.0, min_area=1)
    sizes = (5, 3, 16)
    batches = list(zip(PRED.split(sizes), TARGET.split(sizes), strict=True))
    for p, t in batches:
        acc.update(p, t)
    got = acc.compute()
    assert tuple(got) == PROTOCOL_KEYS and all(isinstance(v, float) for v in got.values())
    tp, fp, fn = confusion_counts(PRED, TARGET)
    sens, spec = detection_rates(tp + fp, tp + fn, min_area=1)
    want = {
        "dice_paper": np.mean([paper_dice(p, t) for p, t in batches]),
        "iou_paper": np.mean([paper_iou(p, t) for p, t in batches]),
        "dice_lesion": lesion_dice(tp, fp, fn),
        "iou_lesion": lesion_iou(tp, fp, fn),
        "dice_pooled": pooled_dice(tp, fp, fn),
        "iou_pooled": pooled_iou(tp, fp, fn),
        "sensitivity_detection": sens,
        "specificity_detection": spec,
    }
    for key in PROTOCOL_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    # The epoch paper value is a mean of batch values, not the value of the pooled epoch.
    assert got["dice_paper"] != pytest.approx(paper_dice(PRED, TARGET), rel=1e-6)

    per = acc.per_sample()
    np.testing.assert_array_equal(per["tp"], tp.numpy())
    np.testing.assert_array_equal(per["pred_area"], (tp + fp).numpy())
    np.testing.assert_array_equal(per["target_area"], TARGET.flatten(1).sum(1).numpy())
    assert all(v.dtype == np.int64 for v in per.values())

    acc.reset()
    with pytest.raises(IchsegError, match="before any update"):
        acc.compute()
    acc.update(*batches[1])
    assert acc.compute()["dice_paper"] == pytest.approx(paper_dice(*batches[1]))
    assert len(acc.per_sample()["tp"]) == 3


def test_protocol_descriptions():
    assert set(PROTOCOLS) == {key.split("_")[1] for key in PROTOCOL_KEYS}
    assert all(isinstance(v, str) and v for v in PROTOCOLS.values())


def test_bad_inputs_raise():
    with pytest.raises(IchsegError, match="boolean"):
        confusion_counts(PRED.float(), TARGET)
    with pytest.raises(IchsegError, match="one shape"):
        confusion_counts(PRED[:2], TARGET[:3])
