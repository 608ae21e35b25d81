"""The ABC/2 bedside estimate of a bleed's volume (Kothari et al., Stroke 1996;27:1304-5),
computed from a mask the way a reader measures it on the scan.

On the axial slice where the bleed's area is largest:
- A is the largest diameter of the bleed: the farthest-apart pair of corners of its pixels
  (the maximum Feret diameter of the pixel squares), in mm;
- B is the largest diameter perpendicular to A on that slice: the bleed's extent along the
  in-plane direction at 90° to A (the Feret width in that direction), in mm.
C is the slice thickness times the weighted count of slices with bleed: a slice whose bleed area is
at least 75% of the largest counts 1, from 25% up to 75% counts 0.5, under 25% counts 0
(Kothari's rule). The estimate is A·B·C/2 (the ellipsoid volume π/6·ABC with π taken as 3).
An empty mask gives 0 mL. Slices lie along the mask's last axis; the slice thickness is the
voxel size along it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import ConvexHull

# Kothari's weights: (share of the largest slice area at least this, weight).
SLICE_WEIGHTS = ((0.75, 1.0), (0.25, 0.5))


def _pixel_corners_mm(slice_mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The corners (mm) of every bleed pixel of one slice (never collinear: a pixel has four)."""
    rows, cols = np.nonzero(slice_mask)
    corners = np.concatenate(
        [np.stack([rows + dr, cols + dc], axis=1) for dr in (0, 1) for dc in (0, 1)]
    ).astype(float)
    return np.unique(corners, axis=0) * np.asarray(spacing[:2], dtype=float)


def diameters_mm(slice_mask: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """A (largest Feret diameter) and B (extent perpendicular to A) of one slice's bleed, mm."""
    corners = _pixel_corners_mm(slice_mask, spacing)
    hull = corners[ConvexHull(corners).vertices]
    gaps = hull[:, None, :] - hull[None, :, :]
    lengths = np.hypot(gaps[..., 0], gaps[..., 1])
    i, j = np.unravel_index(int(np.argmax(lengths)), lengths.shape)
    a = float(lengths[i, j])
    direction = gaps[i, j] / a
    across = hull @ np.array([-direction[1], direction[0]])
    return a, float(across.max() - across.min())


def abc2_ml(mask: np.ndarray, spacing: Sequence[float]) -> dict:
    """The ABC/2 estimate of `mask` (3-D, slices on the last axis) with its parts."""
    areas = np.count_nonzero(mask, axis=(0, 1))
    if not areas.any():
        return {"abc2_ml": 0.0, "a_mm": 0.0, "b_mm": 0.0, "c_mm": 0.0, "largest_slice": None}
    largest = int(np.argmax(areas))
    a, b = diameters_mm(mask[:, :, largest], spacing)
    share = areas / areas[largest]
    weights = np.select([share >= cut for cut, _ in SLICE_WEIGHTS], [w for _, w in SLICE_WEIGHTS])
    c = float(weights.sum()) * float(spacing[2])
    return {
        "abc2_ml": a * b * c / 2.0 / 1000.0,
        "a_mm": a,
        "b_mm": b,
        "c_mm": c,
        "largest_slice": largest + 1,
    }
