"""Whole volumes: a scan in HU to a hemorrhage mask of its shape, and what that mask holds.

A scan is read as the training data was (`prepared_slices`: the checkpoints' CT window, upright
slices, bilinear antialiased resize to the training size, 8-bit rounding, then the intensity
encoding). The ensemble's averaged probabilities are resized back to the scan's in-plane size
(bilinear), thresholded (probability > the checkpoints' threshold, 0.5 by default) and rotated
back (`from_slices`).

Bleeds are the 26-connected components of the 3-D mask (voxels touching by a face, an edge or a
corner are one bleed): with 5 mm slices the edge of a sloping bleed shifts by a few pixels from one
slice to the next, and should not split it in two.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ichseg.data.transforms import encode_intensity, from_slices, prepared_slices
from ichseg.inference.ensemble import Ensemble, require_shared
from ichseg.models.network import check_input_size

CONNECTIVITY = 26
STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-connectivity


class VolumeEnsemble:
    """An ensemble whose checkpoints share the preprocessing that whole scans are read with."""

    def __init__(self, ensemble: Ensemble) -> None:
        checkpoints = ensemble.checkpoints
        found = [c.preprocess() for c in checkpoints]
        require_shared(checkpoints, "preprocess", [preprocess for preprocess, _ in found])
        self.ensemble = ensemble
        self.preprocess, self.preprocess_source = found[0]
        for checkpoint in checkpoints:
            check_input_size(checkpoint.net, self.preprocess.size, f"checkpoint {checkpoint.path}")

    @classmethod
    def load(
        cls, paths: Sequence[str | os.PathLike], device: torch.device, **options
    ) -> VolumeEnsemble:
        """Load every checkpoint (`Ensemble.load`'s `options`: flip, batch_size, precision) and
        check they can be averaged over whole scans."""
        return cls(Ensemble.load(paths, device, **options))

    def slices(self, hu: np.ndarray) -> torch.Tensor:
        """(H, W, N) HU -> (N, 1, S, S) network inputs, exactly as the prepared cache made them."""
        p = self.preprocess
        return encode_intensity(prepared_slices(hu, p.level, p.width, p.size), p.intensity)[:, None]

    @torch.inference_mode()
    def predict(self, hu: np.ndarray) -> np.ndarray:
        """Boolean mask (H, W, N) of a scan in HU (H, W, N), in the scan's own orientation."""
        upright_shape = (hu.shape[1], hu.shape[0])
        masks = []
        for prob in self.ensemble.probabilities(self.slices(hu)):
            prob = F.interpolate(
                prob, size=upright_shape, mode="bilinear", align_corners=False, antialias=True
            )
            masks.append((prob[:, 0] > self.ensemble.threshold).cpu())
        return from_slices(torch.cat(masks).numpy())


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding every set voxel (empty slices for an empty mask)."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, 0))
    return tuple(box)


def summarize(mask: np.ndarray, zooms: Sequence[float]) -> dict:
    """Hemorrhage slices (1-based, last axis), bleed volume (mL) and 26-connected bleeds."""
    voxel_ml = float(np.prod(zooms[:3])) / 1000.0
    box = _bounding_box(mask)
    # Labelling only the box around the bleeds: a whole 512×512×40 volume costs ~0.2 s.
    labels, n_bleeds = ndimage.label(mask[box], structure=STRUCTURE)
    sizes = np.bincount(labels.ravel(), minlength=n_bleeds + 1)[1:]
    found_boxes = ndimage.find_objects(labels) if n_bleeds else []
    first = box[2].start
    bleeds = [
        {
            "voxels": int(size),
            "volume_ml": round(float(size) * voxel_ml, 4),
            "slices": [first + found[2].start + 1, first + found[2].stop],
        }
        for size, found in zip(sizes, found_boxes, strict=True)
    ]
    bleeds.sort(key=lambda b: -b["voxels"])
    per_slice = np.count_nonzero(mask, axis=(0, 1))
    voxels = int(per_slice.sum())
    return {
        "n_slices": int(mask.shape[2]),
        "slices_with_hemorrhage": [int(i) + 1 for i in np.flatnonzero(per_slice)],
        "n_slices_with_hemorrhage": int(np.count_nonzero(per_slice)),
        "bleed_voxels": voxels,
        "bleed_volume_ml": round(voxels * voxel_ml, 4),
        "n_bleeds": int(n_bleeds),
        "connectivity": CONNECTIVITY,
        "bleeds": bleeds,
        "voxel_mm": [float(z) for z in zooms[:3]],
    }
