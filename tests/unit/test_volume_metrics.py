"""Whole-volume metrics against known answers and independent computations: scipy for ichseg's
protocol, DeepMind's surface-distance and numpy for INSTANCE 2022's official definitions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from ichseg.inference.volume_metrics import (
    VOLUME_PROTOCOLS,
    dice_3d,
    hd95_mm,
    mean_text,
    nsd,
    protocol_for_source,
    summarize_rows,
    volume_scores,
)

SPACING = (0.5, 0.7, 5.0)
ICHSEG = VOLUME_PROTOCOLS["ichseg"]


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
    row = volume_scores(pred, truth, SPACING, ICHSEG, 2.5)
    voxel_ml = np.prod(SPACING) / 1000
    assert row["dice_3d"] == pytest.approx(2 * 32 / 80)
    assert row["rvd"] == pytest.approx(16 / 32)
    assert row["volume_error_ml"] == pytest.approx(16 * voxel_ml)
    empty = np.zeros(shape, bool)
    missed = volume_scores(empty, truth, SPACING, ICHSEG, 2.5)  # a bleed, no prediction
    assert missed["dice_3d"] == 0 and missed["nsd"] == 0 and missed["rvd"] == -1
    assert math.isnan(missed["hd95_mm"])
    false_alarm = volume_scores(pred, empty, SPACING, ICHSEG, 2.5)
    assert false_alarm["nsd"] == 0 and math.isnan(false_alarm["rvd"])
    assert math.isnan(false_alarm["hd95_mm"]) and false_alarm["dice_3d"] == 0
    clean = volume_scores(empty, empty, SPACING, ICHSEG, 2.5)
    assert all(math.isnan(clean[k]) for k in ("dice_3d", "hd95_mm", "nsd", "rvd"))
    summary = summarize_rows([row, missed, false_alarm, clean], ICHSEG)
    assert summary["dice_3d_defined_for"] == 3 and summary["hd95_mm_defined_for"] == 1
    assert summary["nsd_defined_for"] == 3 and summary["rvd_defined_for"] == 2
    assert summary["dice_3d_mean"] == pytest.approx((0.8 + 0 + 0) / 3)
    assert summary["patient_counts"] == {"tp": 1, "fn": 1, "tn": 1, "fp": 1}


# --- The instance22 protocol: INSTANCE 2022's official definitions ---------------------------


@pytest.fixture
def deepmind(monkeypatch):
    """DeepMind's surface-distance package (the INSTANCE 2022 evaluation copies it), which
    still spells numpy's infinity `np.Inf` (gone in numpy 2)."""
    package = pytest.importorskip("surface_distance")
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)
    return package


def official_scores(pred: np.ndarray, truth: np.ndarray, spacing, deepmind) -> dict:
    """INSTANCE 2022's evaluate_case, from its published definitions: smoothed Dice and |RVD| in
    numpy, HD100 and NSD at 0.42 mm by DeepMind's package (NaN where it raises or divides 0/0)."""
    p, t = int(pred.sum()), int(truth.sum())
    surfaces = deepmind.compute_surface_distances(truth, pred, spacing)
    with np.errstate(invalid="ignore"):
        surface_dice = deepmind.compute_surface_dice_at_tolerance(surfaces, 0.42)
    return {
        "dice": (2 * np.logical_and(pred, truth).sum() + 1e-5) / (p + t + 1e-5),
        "hd_mm": deepmind.compute_robust_hausdorff(surfaces, 100),
        "nsd": surface_dice,
        "rvd_abs": abs((p - t) / t) if t else math.nan,
    }


def _same(found: float, expected: float, rel: float = 1e-12) -> bool:
    if math.isnan(expected) or math.isinf(expected):
        return found == expected or (math.isnan(found) and math.isnan(expected))
    return found == pytest.approx(expected, rel=rel, abs=1e-15)


@pytest.mark.parametrize("seed", range(12))
def test_instance22_scores_are_the_official_ones(deepmind, seed):
    rng = np.random.default_rng(seed)
    shape = (24, 20, 7)
    spacing = tuple(float(s) for s in rng.uniform(0.3, 5.0, 3))  # anisotropic
    truth = blob(shape, (12, 10, 3), (6, 5, 2.5)) ^ (rng.random(shape) < 0.02)
    pred = blob(shape, (12 + rng.integers(-3, 4), 10 + rng.integers(-3, 4), 3), (5, 6, 2))
    if seed % 4 == 1:
        truth[:] = False  # a false alarm: HD infinite, |RVD| undefined
    if seed % 4 == 2:
        pred[:] = False  # a missed bleed: HD infinite, NSD 0
    if seed % 4 == 3:
        truth[:] = pred[:] = False  # nothing anywhere: Dice 1, NSD 0/0
    row = volume_scores(pred, truth, spacing, VOLUME_PROTOCOLS["instance22"])
    expected = official_scores(pred, truth, spacing, deepmind)
    for key, value in expected.items():
        assert _same(row[key], value), (key, row[key], value)
    assert set(expected) == {key for key, _ in VOLUME_PROTOCOLS["instance22"].scores}


def test_infinite_distances_are_left_out_of_the_mean_and_counted():
    protocol = VOLUME_PROTOCOLS["instance22"]
    shape = (10, 10, 4)
    truth, empty = np.zeros(shape, bool), np.zeros(shape, bool)
    truth[2:6, 2:6, 1:3] = True
    shifted = np.roll(truth, 2, axis=0)
    rows = [volume_scores(p, t, SPACING, protocol) for p, t in ((shifted, truth), (empty, truth))]
    rows.append(volume_scores(shifted, empty, SPACING, protocol))
    assert [math.isinf(r["hd_mm"]) for r in rows] == [False, True, True]
    summary = summarize_rows(rows, protocol)
    assert summary["hd_mm_mean"] == rows[0]["hd_mm"]
    assert (summary["hd_mm_defined_for"], summary["hd_mm_infinite"]) == (1, 2)
    assert mean_text(summary, "hd_mm", 1) == f"{rows[0]['hd_mm']:.1f} (1; 2 inf)"
    assert mean_text(summary, "dice", 3) == f"{summary['dice_mean']:.3f} (3)"
    # The summary is JSON without NaN or Infinity: an undefined CCC (2 volumes) is null.
    json.dumps(summary, allow_nan=False)
    assert summary["volume_agreement"]["ichseg"]["ccc"] is None
    assert summary["volume_agreement"]["ichseg"]["n"] == 2


def test_the_default_tolerance_is_the_protocols_and_a_source_gets_its_challenges():
    assert VOLUME_PROTOCOLS["ichseg"].nsd_tolerance_mm == 2.5
    assert VOLUME_PROTOCOLS["instance22"].nsd_tolerance_mm == 0.42
    assert protocol_for_source("instance22").name == "instance22"
    assert protocol_for_source("bhsd").name == protocol_for_source("physionet").name == "ichseg"
