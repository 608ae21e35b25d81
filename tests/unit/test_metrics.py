"""Metric protocols cross-checked against scikit-learn and direct numpy formulas.

The hard protocols call MONAI's confusion-matrix functions and the paper protocol is ichseg's
own, so each is checked against a computation that shares no code with it: numpy transcriptions
of the formulas and of the authors' Keras metrics, scikit-learn, and MONAI's `DiceLoss` for the
paper protocol.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import f1_score, jaccard_score, recall_score

from ichseg.errors import IchsegError
from ichseg.metrics import (
    PROTOCOL_KEYS,
    PROTOCOLS,
    ProtocolAccumulator,
    confusion_matrix,
    detection_rates,
    lesion_dice,
    lesion_iou,
    pooled_dice,
    pooled_iou,
    stage_keys,
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


def test_confusion_matrix_against_numpy():
    counts = confusion_matrix(PRED, TARGET)
    p = PRED.numpy().reshape(len(PRED), -1)
    t = TARGET.numpy().reshape(len(TARGET), -1)
    assert counts.dtype == torch.int64 and counts.shape == (len(PRED), 4)
    want = np.stack([(p & t).sum(1), (p & ~t).sum(1), (~p & ~t).sum(1), (~p & t).sum(1)], 1)
    np.testing.assert_array_equal(counts.numpy(), want)
    channels_last = PRED.float().to(memory_format=torch.channels_last) > 0
    assert torch.equal(confusion_matrix(channels_last, TARGET), counts)
    # One dim: every element is a sample of one pixel.
    flat = confusion_matrix(PRED.flatten(), TARGET.flatten())
    assert torch.equal(flat.sum(0), counts.sum(0)) and flat.shape == (PRED.numel(), 4)


def numpy_lesion(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean per-slice Dice and IoU over slices with ground truth, slice by slice in numpy."""
    dice, iou = [], []
    for p, t in zip(pred.astype(bool), target.astype(bool), strict=True):
        if t.any():
            inter, union = np.sum(p & t), np.sum(p | t)
            dice.append(2 * inter / (p.sum() + t.sum()))
            iou.append(inter / union)
    return float(np.mean(dice)), float(np.mean(iou))


def test_lesion_against_numpy():
    counts = confusion_matrix(PRED, TARGET)
    want_dice, want_iou = numpy_lesion(PRED.numpy(), TARGET.numpy())
    assert lesion_dice(counts) == pytest.approx(want_dice, rel=1e-12)
    assert lesion_iou(counts) == pytest.approx(want_iou, rel=1e-12)
    # Slices without ground truth are left out, whatever was predicted on them (slice 0).
    assert lesion_dice(counts[1:]) == pytest.approx(lesion_dice(counts), rel=1e-12)
    # An empty prediction on a lesion (slice 1) scores 0 and counts.
    assert lesion_dice(counts[1:2]) == 0.0
    assert math.isnan(lesion_dice(counts[[0, 2]])) and math.isnan(lesion_iou(counts[[0, 2]]))


def test_pooled_matches_sklearn():
    y_true = TARGET.numpy().ravel()
    y_pred = PRED.numpy().ravel()
    counts = confusion_matrix(PRED, TARGET)
    assert pooled_dice(counts) == pytest.approx(f1_score(y_true, y_pred), abs=1e-12)
    assert pooled_iou(counts) == pytest.approx(jaccard_score(y_true, y_pred), abs=1e-12)
    both_empty = confusion_matrix(PRED[2:3], TARGET[2:3])
    assert math.isnan(pooled_dice(both_empty)) and math.isnan(pooled_iou(both_empty))


@pytest.mark.parametrize("min_area", [0, 3])
def test_detection_matches_sklearn(min_area):
    tp, fp, _, fn = confusion_matrix(PRED, TARGET).unbind(1)
    pred_area, target_area = tp + fp, tp + fn
    truth = (target_area > 0).numpy().astype(int)
    called = (pred_area > min_area).numpy().astype(int)
    tn_, fp_, fn_, tp_ = sk_confusion_matrix(truth, called, labels=[0, 1]).ravel()
    sens, spec = detection_rates(pred_area, target_area, min_area)
    assert sens == pytest.approx(recall_score(truth, called, pos_label=1))
    assert spec == pytest.approx(recall_score(truth, called, pos_label=0))
    assert sens == pytest.approx(tp_ / (tp_ + fn_)) and spec == pytest.approx(tn_ / (tn_ + fp_))


def test_detection_threshold_is_strict():
    sens, spec = detection_rates(torch.tensor([2, 3, 0, 3]), torch.tensor([5, 5, 0, 0]), 2)
    # Area 2 is not > 2: a missed lesion; area 3 on an empty slice: a false call.
    assert (sens, spec) == (0.5, 0.5)


def random_probs(n: int, seed: int, size: int = 12) -> torch.Tensor:
    """(n, 1, size, size) sigmoid probabilities near TARGET, with confident and unsure pixels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 1, size, size, generator=g) * 3 + (TARGET[:n].float() * 4 - 2)
    return torch.sigmoid(logits)


PROB = random_probs(24, seed=11)


def keras_dice_coef(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The authors' Keras `dice_coef` on one batch, in numpy: smooth 100, all pixels pooled."""
    t, p = y_true.astype(np.float64).ravel(), y_pred.astype(np.float64).ravel()
    return (2 * np.sum(t * p) + 100) / (np.sum(t) + np.sum(p) + 100)


def keras_iou(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The authors' Keras `iou` on one batch, in numpy."""
    t, p = y_true.astype(np.float64), y_pred.astype(np.float64)
    inter = np.sum(t * p)
    return (inter + 100) / (np.sum(t + p) - inter + 100)


def test_paper_protocol_is_keras_soft_metric_averaged_over_batches():
    sizes = (5, 3, 16)
    acc = ProtocolAccumulator()
    for p, t in zip(PROB.split(sizes), TARGET.split(sizes), strict=True):
        acc.update(p, t)
    got = acc.compute()
    probs, truth = (
        np.split(PROB.numpy(), np.cumsum(sizes)[:-1]),
        np.split(TARGET.numpy(), np.cumsum(sizes)[:-1]),
    )
    want_dice = np.mean([keras_dice_coef(t, p) for p, t in zip(probs, truth, strict=True)])
    want_iou = np.mean([keras_iou(t, p) for p, t in zip(probs, truth, strict=True)])
    assert got["dice_paper"] == pytest.approx(want_dice, rel=1e-6)
    assert got["iou_paper"] == pytest.approx(want_iou, rel=1e-6)
    # Per image: Keras evaluate with batch size 1.
    per_image = [keras_dice_coef(t, p) for p, t in zip(PROB.numpy(), TARGET.numpy(), strict=True)]
    assert got["dice_perimage"] == pytest.approx(np.mean(per_image), rel=1e-6)
    per_image_iou = [keras_iou(t, p) for p, t in zip(PROB.numpy(), TARGET.numpy(), strict=True)]
    assert got["iou_perimage"] == pytest.approx(np.mean(per_image_iou), rel=1e-6)
    np.testing.assert_allclose(acc.per_sample()["soft_dice"], per_image, rtol=1e-6)
    # Soft, not thresholded: the same masks at 0/1 give another value.
    hard = ProtocolAccumulator()
    hard.update((PROB > 0.5).float(), TARGET)
    assert hard.compute()["dice_paper"] != pytest.approx(
        keras_dice_coef(TARGET.numpy(), PROB.numpy()), rel=1e-3
    )


def test_paper_protocol_matches_monai_batch_dice():
    from monai.losses import DiceLoss

    loss = DiceLoss(sigmoid=False, batch=True, smooth_nr=100.0, smooth_dr=100.0)
    acc = ProtocolAccumulator()
    acc.update(PROB, TARGET)
    assert acc.compute()["dice_paper"] == pytest.approx(
        1 - float(loss(PROB, TARGET.float())), rel=1e-5
    )


def test_empty_slices_count_as_near_perfect_under_the_soft_protocols():
    empty = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    acc = ProtocolAccumulator()
    acc.update(torch.full((4, 1, 8, 8), 0.01), empty)
    got = acc.compute()
    # 2·0 + 100 over 4·64·0.01 + 100: about 0.975 for a confident empty prediction.
    assert got["dice_paper"] == pytest.approx(100 / (2.56 + 100))
    assert got["dice_perimage"] == pytest.approx(100 / (0.64 + 100))
    # ...while lesion and pooled protocols have nothing to score.
    assert math.isnan(got["dice_lesion"]) and math.isnan(got["dice_pooled"])
    assert math.isnan(got["sensitivity_detection"]) and got["specificity_detection"] == 1.0


def test_onebatch_is_what_keras_validation_steps_would_draw():
    acc = ProtocolAccumulator()
    for p, t in zip(PROB.split(7), TARGET.split(7), strict=True):
        acc.update(p, t)
    got = acc.compute(keras_validation=(10, torch.Generator().manual_seed(3)))
    # n // batch = 2 batches of 10 from one shuffle; the last 4 slices are never seen.
    order = torch.randperm(24, generator=torch.Generator().manual_seed(3)).numpy()
    batches = [order[:10], order[10:20]]
    want = np.mean([keras_dice_coef(TARGET.numpy()[b], PROB.numpy()[b]) for b in batches])
    assert got["dice_onebatch"] == pytest.approx(want, rel=1e-6)
    # Fewer slices than one batch: Keras validates on nothing.
    none = acc.compute(keras_validation=(25, torch.Generator().manual_seed(3)))
    assert math.isnan(none["dice_onebatch"]) and math.isnan(none["iou_onebatch"])


def test_accumulator_hard_protocols_over_uneven_batches():
    acc = ProtocolAccumulator(min_area=1, threshold=0.5)
    sizes = (5, 3, 16)
    for p, t in zip(PRED.float().split(sizes), TARGET.split(sizes), strict=True):
        acc.update(p, t)
    got = acc.compute()
    assert tuple(got) == stage_keys("test") and all(isinstance(v, float) for v in got.values())
    counts = confusion_matrix(PRED, TARGET)
    tp, fp, _, fn = counts.unbind(1)
    sens, spec = detection_rates(tp + fp, tp + fn, min_area=1)
    want = {
        "dice_lesion": lesion_dice(counts),
        "iou_lesion": lesion_iou(counts),
        "dice_pooled": pooled_dice(counts),
        "iou_pooled": pooled_iou(counts),
        "sensitivity_detection": sens,
        "specificity_detection": spec,
    }
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key

    per = acc.per_sample()
    np.testing.assert_array_equal(per["tp"], tp.numpy())
    np.testing.assert_array_equal(per["pred_area"], (tp + fp).numpy())
    np.testing.assert_array_equal(per["target_area"], TARGET.flatten(1).sum(1).numpy())

    acc.reset()
    with pytest.raises(IchsegError, match="before any update"):
        acc.compute()


def test_protocol_registry():
    # The one place the record keys are spelled out: records, W&B and reports depend on them.
    assert PROTOCOL_KEYS == (
        "dice_paper",
        "iou_paper",
        "dice_onebatch",
        "iou_onebatch",
        "dice_perimage",
        "iou_perimage",
        "dice_lesion",
        "iou_lesion",
        "dice_pooled",
        "iou_pooled",
        "sensitivity_detection",
        "specificity_detection",
    )
    assert tuple(k for p in PROTOCOLS.values() for k in p.keys) == PROTOCOL_KEYS
    assert set(stage_keys("train")) == set(PROTOCOL_KEYS) - {"dice_onebatch", "iou_onebatch"}
    assert all(p.description for p in PROTOCOLS.values())
    assert "dice_onebatch" in stage_keys("val") and "dice_onebatch" not in stage_keys("train")
    assert all(key.endswith("_" + name) for name, p in PROTOCOLS.items() for key in p.keys)


def test_bad_inputs_raise():
    with pytest.raises(IchsegError, match="boolean"):
        confusion_matrix(PRED.float(), TARGET)
    with pytest.raises(IchsegError, match="one shape"):
        confusion_matrix(PRED[:2], TARGET[:3])
    with pytest.raises(IchsegError, match="at least one sample"):
        confusion_matrix(PRED[:0], TARGET[:0])
    with pytest.raises(IchsegError, match="at least one pixel"):
        confusion_matrix(PRED[:, :0], TARGET[:, :0])


def test_confusion_matrix_equals_monai_and_stays_exact_past_float32():
    from monai.metrics import get_confusion_matrix

    monai = get_confusion_matrix(
        PRED.flatten(1).unsqueeze(1).to(torch.uint8), TARGET.flatten(1).unsqueeze(1).to(torch.uint8)
    )[:, 0]
    assert torch.equal(confusion_matrix(PRED, TARGET), monai.to(torch.int64))
    # Past 2**24 pixels float32 counting (MONAI's) is no longer exact; int64 counting is.
    big = torch.ones(1, 2**24 + 1, dtype=torch.bool)
    assert confusion_matrix(big, big).tolist() == [[2**24 + 1, 0, 0, 0]]
