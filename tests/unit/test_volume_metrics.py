"""Whole-volume metrics against known answers and an independent scipy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from ichseg.inference.volume_metrics import dice_3d, hd95_mm, nsd, summarize_rows, volume_scores

SPACING = (0.5, 0.7, 5.0)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its 6-connected erosion (outside the grid counts empty)."""
    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded, ndimage.generate_binary_structure(3, 1))
    return (padded & ~eroded)[1:-1, 1:-1, 1:-1]


def _distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from every boundary voxel of `a` to the nearest boundary voxel of `b`."""
    to_b = ndimage.distance_transform_edt(~_surface(b), sampling=spacing)
    return to_b[_surface(a)]


def reference_hd95(p: np.ndarray, t: np.ndarray, spacing) -> float:
    return max(
        np.percentile(_distances(p, t, spacing), 95), np.percentile(_distances(t, p, spacing), 95)
    )


def reference_nsd(p: np.ndarray, t: np.ndarray, spacing, tol: float) -> float:
    dp, dt = _distances(p, t, spacing), _distances(t, p, spacing)
    return (np.sum(dp <= tol) + np.sum(dt <= tol)) / (dp.size + dt.size)


def blob(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1


def test_known_answers_parallel_planes_and_identity():
    shape = (12, 12, 8)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[2:10, 2:10, 2] = True
    b[2:10, 2:10, 4] = True  # two slices above: every surface voxel is 2 * 5 mm away
    assert hd95_mm(a, b, SPACING) == pytest.approx(10.0)
    assert nsd(a, b, SPACING, 5.0) == 0.0
    assert nsd(a, b, SPACING, 10.0) == pytest.approx(1.0)
    assert dice_3d(a, b) == 0.0
    assert hd95_mm(a, a, SPACING) == 0.0 and nsd(a, a, SPACING, 0.1) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_monai_surface_metrics_match_scipy(seed):
    rng = np.random.default_rng(seed)
    shape = (24, 20, 9)
    truth = blob(shape, (12, 10, 4), (6, 5, 2.5))
    pred = blob(shape, (12 + rng.integers(-3, 4), 10 + rng.integers(-3, 4), 4), (5, 6, 2))
    pred ^= rng.random(shape) < 0.02  # speckle, so the surfaces are irregular
    for tol in (0.5, 2.5, 6.0):
        assert nsd(pred, truth, SPACING, tol) == pytest.approx(
            reference_nsd(pred, truth, SPACING, tol), abs=1e-6
        )
    assert hd95_mm(pred, truth, SPACING) == pytest.approx(
        reference_hd95(pred, truth, SPACING), rel=1e-5
    )


def test_scores_and_nan_rules():
    shape = (10, 10, 4)
    truth = np.zeros(shape, bool)
    truth[2:6, 2:6, 1:3] = True  # 32 voxels
    pred = np.zeros(shape, bool)
    pred[2:6, 2:8, 1:3] = True  # 48 voxels, 32 shared
    row = volume_scores(pred, truth, SPACING, 2.5)
    voxel_ml = np.prod(SPACING) / 1000
    assert row["dice_3d"] == pytest.approx(2 * 32 / 80)
    assert row["rvd"] == pytest.approx(16 / 32)
    assert row["volume_error_ml"] == pytest.approx(16 * voxel_ml)
    empty = np.zeros(shape, bool)
    missed = volume_scores(empty, truth, SPACING, 2.5)  # a bleed, no prediction
    assert missed["dice_3d"] == 0 and missed["nsd"] == 0 and missed["rvd"] == -1
    assert math.isnan(missed["hd95_mm"])
    false_alarm = volume_scores(pred, empty, SPACING, 2.5)
    assert false_alarm["nsd"] == 0 and math.isnan(false_alarm["rvd"])
    assert math.isnan(false_alarm["hd95_mm"]) and false_alarm["dice_3d"] == 0
    clean = volume_scores(empty, empty, SPACING, 2.5)
    assert all(math.isnan(clean[k]) for k in ("dice_3d", "hd95_mm", "nsd", "rvd"))
    summary = summarize_rows([row, missed, false_alarm, clean])
    assert summary["dice_3d_defined_for"] == 3 and summary["hd95_mm_defined_for"] == 1
    assert summary["nsd_defined_for"] == 3 and summary["rvd_defined_for"] == 2
    assert summary["dice_3d_mean"] == pytest.approx((0.8 + 0 + 0) / 3)
    assert summary["patient_counts"] == {"tp": 1, "fn": 1, "tn": 1, "fp": 1}
