"""Volumes in the training orientation, as their affine says: slices along the scan's axial axis.

The networks see 2-D axial slices, so the array axis a volume is sliced along must be the one
its affine points head-to-foot, whatever order the file stores the axes in. Every volume that
is prepared, evaluated or predicted is brought to the training orientation first:
- array axis 2 is the axial axis (nearest the patient's superior-inferior direction), in the
  file's own slice order (a 2-D network does not care which way the slices run, and slice
  numbers keep meaning the file's);
- array axis 0 runs towards the patient's left and axis 1 towards anterior (`TRAINING_AXES`),
  as the synthetic release stores its scans (`np.rot90` of such a slice shows the head upright).
A volume already stored so is used as it is (`Reorientation.identity`). Predicted masks are
taken back to the input's own grid with `Reorientation.undo`.

Only axis permutations and flips are applied, never resampling: an affine whose axes are more
than `MAX_OBLIQUE_DEG` from every patient axis (a strongly oblique or degenerate affine) is
refused, since no array axis is then clearly axial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from nibabel import orientations

from ichseg.errors import IchsegError

# NIfTI world axes are RAS+: x towards the patient's right, y anterior, z superior.
WORLD_AXES = ("left-right", "posterior-anterior", "inferior-superior")
# Array axes 0 and 1 of a training slice: towards the patient's left, towards anterior.
TRAINING_AXES = ("L", "A")
# Beyond this angle between an array axis and its nearest patient axis the volume is refused.
MAX_OBLIQUE_DEG = 40.0


@dataclass(frozen=True)
class Reorientation:
    """How a volume's array becomes the training orientation (`apply`) and back (`undo`).

    `transform` is a nibabel orientation transform: row i says where input axis i goes and
    whether it is flipped. `axial_axis` is the input array axis that becomes axis 2.
    """

    transform: np.ndarray
    axial_axis: int

    @property
    def identity(self) -> bool:
        """True when the array is already in the training orientation."""
        return bool(np.array_equal(self.transform, [[0, 1], [1, 1], [2, 1]]))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The (X, Y, Z) array of the input grid in the training orientation."""
        if self.identity:
            return array
        return np.ascontiguousarray(orientations.apply_orientation(array, self.transform))

    def undo(self, array: np.ndarray) -> np.ndarray:
        """An array in the training orientation, back in the input's own grid."""
        if self.identity:
            return array
        inverse = np.empty_like(self.transform)
        for axis, (target, flip) in enumerate(self.transform):
            inverse[int(target)] = (axis, flip)
        return np.ascontiguousarray(orientations.apply_orientation(array, inverse))

    def zooms(self, zooms: tuple[float, ...]) -> tuple[float, float, float]:
        """The input's voxel sizes in the order of the training orientation's axes."""
        out = [0.0, 0.0, 0.0]
        for axis, (target, _) in enumerate(self.transform):
            out[int(target)] = float(zooms[axis])
        return tuple(out)  # type: ignore[return-value]

    def affine(self, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The affine of the reoriented array, given the input's `affine` and `shape`."""
        if self.identity:
            return np.asarray(affine)
        return np.asarray(affine) @ orientations.inv_ornt_aff(self.transform, shape[:3])

    def describe(self) -> dict:
        """What was done, for a JSON summary: the axial axis and whether the array was moved."""
        return {"axial_axis": self.axial_axis, "reoriented": not self.identity}


def reorientation(affine: np.ndarray, where: str) -> Reorientation:
    """The `Reorientation` of a volume with this 4x4 `affine` (voxel -> RAS+ mm); IchsegError
    naming `where` for an affine with no clear axial axis."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    lengths = np.linalg.norm(linear, axis=0)
    degenerate = np.any(lengths == 0) or abs(np.linalg.det(linear)) < 1e-12
    if not np.all(np.isfinite(linear)) or degenerate:
        raise IchsegError(
            f"{where}: the affine is degenerate ({np.round(linear, 4).tolist()}); "
            "cannot tell which array axis is axial"
        )
    found = orientations.io_orientation(affine)
    if np.isnan(found).any():
        raise IchsegError(
            f"{where}: the affine's axes cannot be matched to patient axes "
            f"({np.round(linear, 4).tolist()}); cannot tell which array axis is axial"
        )
    for axis, (world, _) in enumerate(found):
        cosine = abs(linear[int(world), axis]) / lengths[axis]
        angle = math.degrees(math.acos(min(1.0, cosine)))
        if angle > MAX_OBLIQUE_DEG:
            raise IchsegError(
                f"{where}: array axis {axis} is {angle:.0f} degrees from the patient's "
                f"{WORLD_AXES[int(world)]} axis (more than {MAX_OBLIQUE_DEG:.0f}); cannot tell "
                "which array axis is axial without resampling"
            )
    axial_axis = int(np.flatnonzero(found[:, 0] == 2)[0])
    target = orientations.axcodes2ornt((*TRAINING_AXES, "S"))
    # Keep the file's slice order: the target's axial direction is the input's own.
    target[2, 1] = found[axial_axis, 1]
    transform = orientations.ornt_transform(found, target).astype(int)
    return Reorientation(transform=transform, axial_axis=axial_axis)
