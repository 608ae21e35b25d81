"""Whole-volume segmentation scores of one predicted mask against its true mask, in millimetres.

Per volume (P predicted, T true voxels; surfaces are the masks' boundary voxels, MONAI's
`get_mask_edges`; distances in mm from the scan's voxel spacing):
- `dice_3d` = 2|P∩T| / (|P| + |T|); NaN when both are empty;
- `hd95_mm`: MONAI `compute_hausdorff_distance(percentile=95)`, the larger of the two directed
  95th-percentile surface distances; NaN when either mask is empty (no distance exists);
- `nsd`: MONAI `compute_surface_dice` with tolerance `tolerance_mm` (normalised surface Dice,
  Nikolov et al. 2021): the fraction of both surfaces within the tolerance of the other; NaN
  when both are empty, 0 when exactly one is;
- `rvd` = (|P| − |T|) / |T| (relative volume difference, signed); NaN when T is empty;
- `volume_error_ml` = (|P| − |T|) × voxel volume / 1000.
Means over volumes leave NaN out and say over how many volumes each is defined. Counts are
numpy's (exact at any size); only the surface metrics go through MONAI.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

# ichseg's default NSD tolerance: one 5 mm slice's half-thickness, 2.5 mm (see docs/data.md).
NSD_TOLERANCE_MM = 2.5

DEFINITIONS = {
    "dice_3d": "2|P∩T|/(|P|+|T|) per volume; NaN (left out of the mean) when both are empty",
    "hd95_mm": "MONAI compute_hausdorff_distance, percentile 95, symmetric, in mm from the "
    "scan's spacing; NaN when either mask is empty",
    "nsd": "MONAI compute_surface_dice (normalised surface Dice) at the stated tolerance in mm; "
    "NaN when both are empty, 0 when exactly one is",
    "rvd": "(|P|-|T|)/|T|, signed; NaN when the true mask is empty",
    "volume_error_ml": "predicted minus true, voxels × prod(spacing) / 1000",
    "patient_detection": "positive when any voxel is predicted / has a mask voxel",
}


def dice_3d(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|) over the whole volume; NaN when both are empty."""
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(pred & truth)) / total


def _cropped(pred: np.ndarray, truth: np.ndarray) -> tuple:
    """Both masks cut to their joint bounding box plus one voxel, as (1, 1, X, Y, Z) tensors."""
    import torch  # not at import time: the CLI's parser reads NSD_TOLERANCE_MM from here

    both = pred | truth
    box = []
    for axis in range(3):
        hits = np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hits[0]) - 1, 0), int(hits[-1]) + 2))
    cut = tuple(box)
    return (
        torch.from_numpy(np.ascontiguousarray(pred[cut]))[None, None],
        torch.from_numpy(np.ascontiguousarray(truth[cut]))[None, None],
    )


@contextlib.contextmanager
def _quiet_monai() -> Iterator[None]:
    """Silence MONAI's deprecation notice about its own internal `get_mask_edges` call, which
    every volume would print (empty masks never reach MONAI, so nothing else is hidden)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
        yield


def hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """MONAI's symmetric 95th-percentile Hausdorff distance in mm; NaN when either is empty."""
    if not pred.any() or not truth.any():
        return math.nan
    from monai.metrics import compute_hausdorff_distance

    p, t = _cropped(pred, truth)
    with _quiet_monai():
        value = compute_hausdorff_distance(p, t, percentile=95, spacing=[float(s) for s in spacing])
    return float(value.item())


def nsd(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> float:
    """MONAI's normalised surface Dice at `tolerance_mm`; NaN both empty, 0 one empty."""
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return math.nan
    if not has_pred or not has_truth:
        return 0.0
    from monai.metrics import compute_surface_dice

    p, t = _cropped(pred, truth)
    with _quiet_monai():
        value = compute_surface_dice(
            p,
            t,
            class_thresholds=[float(tolerance_mm)],
            include_background=True,
            spacing=[float(s) for s in spacing],
        )
    return float(value.item())


def volume_scores(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> dict:
    """Every per-volume score of the module docstring, with the voxel counts and mL."""
    voxel_ml = float(np.prod(spacing[:3])) / 1000.0
    true_voxels, pred_voxels = int(np.count_nonzero(truth)), int(np.count_nonzero(pred))
    return {
        "n_slices": int(truth.shape[2]),
        "true_voxels": true_voxels,
        "predicted_voxels": pred_voxels,
        "true_ml": true_voxels * voxel_ml,
        "predicted_ml": pred_voxels * voxel_ml,
        "volume_error_ml": (pred_voxels - true_voxels) * voxel_ml,
        "rvd": (pred_voxels - true_voxels) / true_voxels if true_voxels else math.nan,
        "dice_3d": dice_3d(pred, truth),
        "hd95_mm": hd95_mm(pred, truth, spacing),
        "nsd": nsd(pred, truth, spacing, tolerance_mm),
        "true_positive_patient": true_voxels > 0,
        "predicted_positive_patient": pred_voxels > 0,
    }


def _ratio(numer: int, denom: int) -> float | None:
    return numer / denom if denom else None


def _defined(rows: Sequence[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if not math.isnan(r[key])]


def summarize_rows(rows: Sequence[dict]) -> dict:
    """Means (and medians) of each score where defined, volume errors, patient-level detection."""
    out: dict = {"n_patients": len(rows)}
    for key in ("dice_3d", "hd95_mm", "nsd", "rvd"):
        values = _defined(rows, key)
        out[f"{key}_mean"] = float(np.mean(values)) if values else None
        out[f"{key}_median"] = float(np.median(values)) if values else None
        out[f"{key}_defined_for"] = len(values)
    errors = np.array([r["volume_error_ml"] for r in rows], dtype=float)
    truth = np.array([r["true_positive_patient"] for r in rows], dtype=bool)
    pred = np.array([r["predicted_positive_patient"] for r in rows], dtype=bool)
    tp, fn = int(np.sum(truth & pred)), int(np.sum(truth & ~pred))
    tn, fp = int(np.sum(~truth & ~pred)), int(np.sum(~truth & pred))
    out.update(
        {
            "volume_error_ml_mean": float(errors.mean()) if len(rows) else None,
            "volume_abs_error_ml_mean": float(np.abs(errors).mean()) if len(rows) else None,
            "volume_abs_error_ml_median": float(np.median(np.abs(errors))) if len(rows) else None,
            "patient_sensitivity": _ratio(tp, tp + fn),
            "patient_specificity": _ratio(tn, tn + fp),
            "patient_counts": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
        }
    )
    return out
