"""Surface distances on surface elements weighted by their area (Nikolov et al. 2021, the method
of DeepMind's surface-distance library that the INSTANCE 2022 challenge's evaluation uses).

A mask's surface is made of surface elements ("surfels"): the corners of the voxel grid whose
2×2×2 block of voxels is neither all inside nor all outside. Each surfel carries the area of the
marching-cubes surface in its block (`ichseg.inference.surfel_table`, scaled to the voxel
spacing) and its distance in mm to the nearest surfel of the other mask (an exact Euclidean
distance transform over the corner grid). From these:
- `robust_hausdorff_mm(d, percent)`: for each direction, the distance below which `percent` of
  the surface area lies (the first surfel, in order of distance, where the cumulative area share
  reaches `percent` / 100); the larger of the two; infinite when either mask has no surface;
- `surface_dice(d, tolerance_mm)`: the area of both surfaces within the tolerance of the other,
  over their total area; 0 when exactly one mask is empty, NaN when both are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ichseg.inference.surfel_table import CODE_WEIGHTS, SURFEL_NORMALS


@dataclass(frozen=True)
class SurfaceDistances:
    """Each surfel's distance to the other surface (mm) and its area (mm²), sorted by distance;
    `truth_to_pred` holds the true mask's surfels, `pred_to_truth` the prediction's."""

    truth_to_pred: np.ndarray
    truth_areas: np.ndarray
    pred_to_truth: np.ndarray
    pred_areas: np.ndarray


def surfel_areas(spacing: Sequence[float]) -> np.ndarray:
    """The surface area (mm²) in a block of each of the 256 codes at this voxel spacing: each
    triangle's area vector scaled by the areas of the faces it is normal to, its length summed."""
    sx, sy, sz = (float(s) for s in spacing)
    face_areas = np.array([sy * sz, sx * sz, sx * sy])
    return np.array(
        [
            sum(float(np.linalg.norm(np.asarray(n) * face_areas)) for n in normals)
            for normals in SURFEL_NORMALS
        ]
    )


def _corner_codes(mask: np.ndarray) -> np.ndarray:
    """The code of each corner of the voxel grid of `mask` (one more corner than voxels along
    every axis): its 2×2×2 block of voxels weighted by `CODE_WEIGHTS`, outside voxels empty."""
    padded = np.pad(mask.astype(np.int32), 1)
    n = [s + 1 for s in mask.shape]
    codes = np.zeros(n, dtype=np.int32)
    for i in range(2):
        for j in range(2):
            for k in range(2):
                codes += CODE_WEIGHTS[i][j][k] * padded[i : i + n[0], j : j + n[1], k : k + n[2]]
    return codes


def _distance_to(border: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The distance (mm) of every corner to the nearest corner of `border`; infinite without one."""
    if not border.any():
        return np.full(border.shape, np.inf)
    return ndimage.distance_transform_edt(~border, sampling=[float(s) for s in spacing])


def surface_distances(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]
) -> SurfaceDistances:
    """The surfels of both masks (3-D, boolean, same shape) with their distances and areas."""
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"expected two 3-D masks of one shape, found {pred.shape}, {truth.shape}")
    both = pred | truth
    if not both.any():
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty)
    box = tuple(
        slice(int(hits[0]), int(hits[-1]) + 1)
        for hits in (
            np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)
        )
    )
    areas = surfel_areas(spacing)
    codes_pred, codes_truth = _corner_codes(pred[box]), _corner_codes(truth[box])
    border_pred = (codes_pred != 0) & (codes_pred != 255)
    border_truth = (codes_truth != 0) & (codes_truth != 255)
    to_pred, to_truth = _distance_to(border_pred, spacing), _distance_to(border_truth, spacing)

    def sorted_pairs(distances: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(distances, kind="stable")
        return distances[order], areas[codes][order]

    truth_d, truth_a = sorted_pairs(to_pred[border_truth], codes_truth[border_truth])
    pred_d, pred_a = sorted_pairs(to_truth[border_pred], codes_pred[border_pred])
    return SurfaceDistances(truth_d, truth_a, pred_d, pred_a)


def _directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """The distance at which the cumulative area share of the sorted surfels reaches `percent`."""
    if distances.size == 0:
        return math.inf
    share = np.cumsum(areas) / np.sum(areas)
    index = int(np.searchsorted(share, percent / 100.0))
    return float(distances[min(index, distances.size - 1)])


def robust_hausdorff_mm(d: SurfaceDistances, percent: float) -> float:
    """The larger directed `percent`-th area-weighted surface distance; inf when either is empty."""
    return max(
        _directed_percentile(d.truth_to_pred, d.truth_areas, percent),
        _directed_percentile(d.pred_to_truth, d.pred_areas, percent),
    )


def surface_dice(d: SurfaceDistances, tolerance_mm: float) -> float:
    """Area of both surfaces within `tolerance_mm` of the other over their total area; NaN when
    both masks are empty."""
    total = float(np.sum(d.truth_areas) + np.sum(d.pred_areas))
    if total == 0:
        return math.nan
    near = np.sum(d.truth_areas[d.truth_to_pred <= tolerance_mm]) + np.sum(
        d.pred_areas[d.pred_to_truth <= tolerance_mm]
    )
    return float(near) / total
