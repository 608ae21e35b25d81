"""ABC/2, volume agreement statistics and area-weighted surface distances, each against an
independent computation: hand-made masks with known answers, scipy, a simulation of the
confidence interval's coverage, and DeepMind's surface-distance package (which the INSTANCE 2022
evaluation copies)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ichseg.inference.abc2 import abc2_ml
from ichseg.inference.surface_elements import (
    robust_hausdorff_mm,
    surface_dice,
    surface_distances,
)
from ichseg.inference.surfel_table import SURFEL_NORMALS
from ichseg.inference.volume_agreement import agreement, concordance

surface_distance = pytest.importorskip("surface_distance")


@pytest.fixture
def deepmind(monkeypatch):
    """DeepMind's package, which still spells numpy's infinity `np.Inf` (gone in numpy 2)."""
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)
    return surface_distance


def test_abc2_of_a_box_has_its_diagonal_width_and_weighted_slices():
    # 6 × 8 pixels of 0.5 mm: 3 × 4 mm, diagonal 5 mm; the width across the diagonal is
    # 2·3·4/5 = 4.8 mm. Slices: three full ones and one of a quarter area (weight 0.5).
    mask = np.zeros((20, 20, 8), bool)
    mask[2:8, 3:11, 2:5] = True
    mask[2:5, 3:7, 5] = True  # 3 × 4 = 12 of 48 pixels: 25% of the largest area
    result = abc2_ml(mask, (0.5, 0.5, 5.0))
    assert result["a_mm"] == pytest.approx(5.0)
    assert result["b_mm"] == pytest.approx(4.8)
    assert result["c_mm"] == pytest.approx(3.5 * 5.0)
    assert result["abc2_ml"] == pytest.approx(5.0 * 4.8 * 17.5 / 2 / 1000)
    assert result["largest_slice"] == 3


def test_abc2_slice_weights_follow_kothari_thresholds():
    # Slice areas 100 (the largest), 80 (≥ 75%: weight 1), 74 (0.5), 25 (0.5), 24 (0).
    mask = np.zeros((12, 12, 5), bool)
    for k, count in enumerate((100, 80, 74, 25, 24)):
        mask[:, :, k].flat[:count] = True
    assert abc2_ml(mask, (1.0, 1.0, 2.0))["c_mm"] == pytest.approx(2.0 * (1 + 1 + 0.5 + 0.5))


def test_abc2_of_an_empty_mask_is_zero():
    assert abc2_ml(np.zeros((8, 8, 3), bool), (1, 1, 1))["abc2_ml"] == 0.0


def test_abc2_of_a_thin_ellipsoid_approaches_its_volume():
    # Slices 1 mm thick through an ellipsoid of semi-axes 30, 20, 15 mm: A ≈ 60, B ≈ 40 mm.
    x, y, z = np.mgrid[:140, :100, :40]
    ellipsoid = ((x - 70) / 60) ** 2 + ((y - 50) / 40) ** 2 + ((z - 20) / 15) ** 2 <= 1
    result = abc2_ml(ellipsoid, (0.5, 0.5, 1.0))
    assert result["a_mm"] == pytest.approx(60.0, abs=1.0)
    assert result["b_mm"] == pytest.approx(40.0, abs=1.0)
    # Kothari's weights: |z| ≤ 7.5 mm weigh 1 (15 or 16 slices), 7.5 < |z| < 13 weigh 0.5.
    weights = [
        1.0 if s >= 0.75 else 0.5 if s >= 0.25 else 0.0
        for s in ellipsoid.sum(axis=(0, 1)) / ellipsoid.sum(axis=(0, 1)).max()
    ]
    assert result["c_mm"] == pytest.approx(sum(weights))


def test_bland_altman_and_errors_match_numpy_and_scipy():
    rng = np.random.default_rng(3)
    truth = rng.uniform(1, 80, 40)
    estimate = truth * 1.1 + rng.normal(0, 4, 40)
    out = agreement(truth, estimate)
    diff = estimate - truth
    assert out["n"] == 40
    assert out["bias_ml"] == pytest.approx(diff.mean())
    assert out["mae_ml"] == pytest.approx(np.abs(diff).mean())
    assert out["median_ae_ml"] == pytest.approx(np.median(np.abs(diff)))
    half = stats.norm.ppf(0.975) * stats.tstd(diff)
    assert out["loa_low_ml"] == pytest.approx(diff.mean() - half)
    assert out["loa_high_ml"] == pytest.approx(diff.mean() + half)


def test_within_share_counts_the_documented_rule():
    truth = np.array([2.0, 40.0, 100.0, 100.0, 3.0])
    estimate = np.array([6.9, 45.1, 109.0, 111.0, 8.5])
    # |d| = 4.9 (≤ 5 mL), 5.1 (> 5 mL, > 4 mL = 10%), 9 (≤ 10 mL), 11 (> 10 mL), 5.5 (> 5 mL)
    assert agreement(truth, estimate)["within_share"] == pytest.approx(2 / 5)


def test_ccc_equals_pearson_times_bias_correction():
    rng = np.random.default_rng(4)
    truth = rng.gamma(2.0, 10.0, 30)
    estimate = 0.8 * truth + 3 + rng.normal(0, 3, 30)
    ccc, low, high = concordance(truth, estimate)
    r = stats.pearsonr(truth, estimate).statistic
    v = truth.std() / estimate.std()
    u = (truth.mean() - estimate.mean()) / math.sqrt(truth.std() * estimate.std())
    assert ccc == pytest.approx(r * 2 / (v + 1 / v + u**2))
    assert low < ccc < high


def test_ccc_of_identical_volumes_is_one_and_constant_volumes_undefined():
    truth = np.array([1.0, 5.0, 9.0, 12.0])
    assert concordance(truth, truth.copy())[0] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in concordance(truth, np.full(4, 3.0)))
    assert all(math.isnan(v) for v in concordance(truth[:2], truth[:2] + 1))


def test_ccc_confidence_interval_covers_the_true_value_about_95_percent():
    # Bivariate normal: var 1 and 1.44, covariance 0.96, means 0 and 0.3; true CCC
    # = 2·0.96 / (1 + 1.44 + 0.09).
    true_ccc = 2 * 0.96 / (1 + 1.44 + 0.09)
    rng = np.random.default_rng(5)
    cov = [[1.0, 0.96], [0.96, 1.44]]
    hits = 0
    trials = 600
    for _ in range(trials):
        xy = rng.multivariate_normal([0.0, 0.3], cov, size=60)
        _, low, high = concordance(xy[:, 0], xy[:, 1])
        hits += low <= true_ccc <= high
    assert 0.92 <= hits / trials <= 0.975


def test_surfel_table_is_deepminds(deepmind):
    from surface_distance.lookup_tables import _NEIGHBOUR_CODE_TO_NORMALS

    assert len(SURFEL_NORMALS) == 256
    for ours, theirs in zip(SURFEL_NORMALS, _NEIGHBOUR_CODE_TO_NORMALS, strict=True):
        assert np.array_equal(np.array(ours, float), np.array(theirs, float))


@pytest.mark.parametrize("seed", range(40))
def test_surface_distances_equal_deepminds_on_anisotropic_masks(deepmind, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(3, 12, 3))
    spacing = tuple(float(s) for s in rng.uniform(0.3, 5.0, 3))
    truth = rng.random(shape) < rng.uniform(0.0, 0.5)
    pred = rng.random(shape) < rng.uniform(0.0, 0.5)
    if seed % 5 == 0:
        truth[:] = False
    if seed % 7 == 0:
        pred[:] = False
    ours = surface_distances(pred, truth, spacing)
    theirs = deepmind.compute_surface_distances(truth, pred, spacing)
    for percent in (100, 95, 50):
        assert robust_hausdorff_mm(ours, percent) == deepmind.compute_robust_hausdorff(
            theirs, percent
        )
    for tolerance in (0.42, 1.0, 5.0):
        with np.errstate(invalid="ignore"):
            expected = deepmind.compute_surface_dice_at_tolerance(theirs, tolerance)
        found = surface_dice(ours, tolerance)
        assert (math.isnan(found) and math.isnan(expected)) or found == pytest.approx(
            expected, rel=1e-12
        )
