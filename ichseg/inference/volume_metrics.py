"""Whole-volume segmentation scores of one predicted mask against its true mask, as named
protocols (`VOLUME_PROTOCOLS`), like the slice protocols of `ichseg.metrics`.

Per volume (P predicted, T true voxels; distances in mm from the scan's voxel spacing), every
protocol gives the voxel counts, the true and predicted volume in mL, `volume_error_ml` =
(|P| − |T|) × voxel volume / 1000, patient-level detection, and the ABC/2 estimate from the true
and from the predicted mask (`ichseg.inference.abc2`). Then:

`ichseg` (the default; surfaces are the masks' boundary voxels, MONAI's `get_mask_edges`):
- `dice_3d` = 2|P∩T| / (|P| + |T|); NaN when both are empty;
- `hd95_mm`: MONAI `compute_hausdorff_distance(percentile=95)`, the larger of the two directed
  95th-percentile surface distances; NaN when either mask is empty (no distance exists);
- `nsd`: MONAI `compute_surface_dice` at the tolerance (default 2.5 mm; normalised surface Dice,
  Nikolov et al. 2021): the share of both surfaces within the tolerance of the other; NaN when
  both are empty, 0 when exactly one is;
- `rvd` = (|P| − |T|) / |T| (relative volume difference, signed); NaN when T is empty.

`instance22` (the INSTANCE 2022 challenge's official evaluation, PerceptionComputingLab/
INSTANCE2022 `Challenge result/evaluation.py`; surfaces are surface elements weighted by their
area, `ichseg.inference.surface_elements`):
- `dice` = (2|P∩T| + 1e-5) / (|P| + |T| + 1e-5): 1 when both are empty, about 0 when one is;
- `hd_mm`: the robust Hausdorff distance at percentile 100 (the larger of the two directed
  maximum distances); infinite when either mask is empty;
- `nsd`: the area-weighted surface Dice at the tolerance (default 0.42 mm); 0 when exactly one
  mask is empty, NaN when both are (the official code divides 0 by 0);
- `rvd_abs` = |(|P| − |T|) / |T||; NaN when T is empty (the official code raises an error).

Means over volumes leave NaN and infinite values out, say over how many volumes each is
(`<score>_defined_for`) and count the infinite ones (`<score>_infinite`). Counts are numpy's
(exact at any size).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ichseg.errors import IchsegError
from ichseg.inference.volume_agreement import DEFINITIONS as AGREEMENT_DEFINITIONS
from ichseg.inference.volume_agreement import agreement

# ichseg's default NSD tolerance: one 5 mm slice's half-thickness, 2.5 mm (see docs/data.md).
NSD_TOLERANCE_MM = 2.5
# INSTANCE 2022's Dice smoothing and NSD tolerance (its official evaluation.py).
INSTANCE22_SMOOTH = 1e-5
INSTANCE22_NSD_TOLERANCE_MM = 0.42

COMMON_DEFINITIONS = {
    "volume_error_ml": "predicted minus true, voxels × prod(spacing) / 1000",
    "patient_detection": "positive when any voxel is predicted / has a mask voxel",
    "abc2_ml": "ABC/2 (Kothari 1996) from the mask: A the largest diameter on the slice of "
    "largest area, B the largest perpendicular to it, C slice thickness × slices weighted "
    "1 / 0.5 / 0 by area ≥ 75% / 25-75% / < 25% of the largest",
    "means": "over the volumes where a score is finite (`_defined_for`); infinite values are "
    "left out and counted (`_infinite`)",
}


def dice_3d(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|) over the whole volume; NaN when both are empty."""
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(pred & truth)) / total


def _cropped(pred: np.ndarray, truth: np.ndarray) -> tuple:
    """Both masks cut to their joint bounding box plus one voxel, as (1, 1, X, Y, Z) tensors."""
    import torch  # not at import time: the CLI's parser reads the protocols from here

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


def _ichseg_scores(pred: np.ndarray, truth: np.ndarray, spacing, tolerance_mm: float) -> dict:
    true_voxels = int(np.count_nonzero(truth))
    return {
        "dice_3d": dice_3d(pred, truth),
        "hd95_mm": hd95_mm(pred, truth, spacing),
        "nsd": nsd(pred, truth, spacing, tolerance_mm),
        "rvd": (int(np.count_nonzero(pred)) - true_voxels) / true_voxels
        if true_voxels
        else math.nan,
    }


def _instance22_scores(pred: np.ndarray, truth: np.ndarray, spacing, tolerance_mm: float) -> dict:
    # Not at import time: scipy is not needed to parse the command line.
    from ichseg.inference.surface_elements import (
        robust_hausdorff_mm,
        surface_dice,
        surface_distances,
    )

    true_voxels, pred_voxels = int(np.count_nonzero(truth)), int(np.count_nonzero(pred))
    both = int(np.count_nonzero(pred & truth))
    surfaces = surface_distances(pred, truth, spacing)
    return {
        "dice": (2.0 * both + INSTANCE22_SMOOTH) / (true_voxels + pred_voxels + INSTANCE22_SMOOTH),
        "hd_mm": robust_hausdorff_mm(surfaces, 100.0),
        "nsd": surface_dice(surfaces, tolerance_mm),
        "rvd_abs": abs(pred_voxels - true_voxels) / true_voxels if true_voxels else math.nan,
    }


@dataclass(frozen=True)
class VolumeProtocol:
    """A named set of whole-volume scores: their keys (with how to show them), the NSD tolerance
    and the definitions every summary carries."""

    name: str
    title: str
    scores: tuple[tuple[str, str], ...]  # (key, label); the first is the protocol's Dice
    nsd_tolerance_mm: float
    definitions: dict[str, str]
    compute: Callable[[np.ndarray, np.ndarray, Sequence[float], float], dict]
    official_for: tuple[str, ...] = ()  # data sources whose challenge published these scores
    challenge: str = ""  # that challenge's name

    @property
    def dice_key(self) -> str:
        """The key of the protocol's Dice."""
        return self.scores[0][0]

    def describe(self, tolerance_mm: float) -> dict:
        """What a summary or report says of the protocol it used, at `tolerance_mm`."""
        return {
            "name": self.name,
            "title": self.title,
            "nsd_tolerance_mm": tolerance_mm,
            "definitions": {**self.definitions, **COMMON_DEFINITIONS},
        }


VOLUME_PROTOCOLS = {
    "ichseg": VolumeProtocol(
        name="ichseg",
        title="ichseg's definitions (boundary voxels by MONAI, HD95, signed RVD)",
        scores=(("dice_3d", "3-D Dice"), ("hd95_mm", "HD95 (mm)"), ("nsd", "NSD"), ("rvd", "RVD")),
        nsd_tolerance_mm=NSD_TOLERANCE_MM,
        definitions={
            "dice_3d": "2|P∩T|/(|P|+|T|) per volume; NaN (left out of the mean) when both are "
            "empty",
            "hd95_mm": "MONAI compute_hausdorff_distance, percentile 95, symmetric, on the "
            "masks' boundary voxels, in mm from the scan's spacing; NaN when either mask is empty",
            "nsd": "MONAI compute_surface_dice (normalised surface Dice) on the boundary voxels "
            "at the stated tolerance in mm; NaN when both are empty, 0 when exactly one is",
            "rvd": "(|P|-|T|)/|T|, signed; NaN when the true mask is empty",
        },
        compute=_ichseg_scores,
    ),
    "instance22": VolumeProtocol(
        name="instance22",
        title="INSTANCE 2022's official definitions (area-weighted surface elements, HD100, "
        "|RVD|, smoothed Dice)",
        scores=(("dice", "Dice"), ("hd_mm", "HD (mm)"), ("nsd", "NSD"), ("rvd_abs", "|RVD|")),
        nsd_tolerance_mm=INSTANCE22_NSD_TOLERANCE_MM,
        definitions={
            "dice": "(2|P∩T|+1e-5)/(|P|+|T|+1e-5): 1 when both are empty",
            "hd_mm": "robust Hausdorff distance at percentile 100 on surface elements weighted "
            "by area (DeepMind's surface-distance), in mm; infinite when either mask is empty",
            "nsd": "surface Dice on area-weighted surface elements at the stated tolerance; 0 "
            "when exactly one mask is empty, NaN when both are",
            "rvd_abs": "|(|P|-|T|)/|T||; NaN when the true mask is empty (the official code "
            "raises an error there)",
        },
        compute=_instance22_scores,
        official_for=("instance22",),
        challenge="INSTANCE 2022",
    ),
}
DEFAULT_VOLUME_PROTOCOL = "ichseg"


def volume_protocol(name: str) -> VolumeProtocol:
    """The protocol called `name`, or one line naming the known ones."""
    if name not in VOLUME_PROTOCOLS:
        raise IchsegError(f"volume metrics {name!r}: expected one of {', '.join(VOLUME_PROTOCOLS)}")
    return VOLUME_PROTOCOLS[name]


def protocol_for_source(source_name: str) -> VolumeProtocol:
    """The protocol a data source's own challenge published, else the default."""
    for protocol in VOLUME_PROTOCOLS.values():
        if source_name in protocol.official_for:
            return protocol
    return VOLUME_PROTOCOLS[DEFAULT_VOLUME_PROTOCOL]


def volume_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    protocol: VolumeProtocol,
    tolerance_mm: float | None = None,
) -> dict:
    """The counts, mL, ABC/2 estimates and `protocol`'s scores of one volume (slices on the last
    axis); NSD at `tolerance_mm`, by default the protocol's."""
    from ichseg.inference.abc2 import abc2_ml  # scipy: not needed to parse the command line

    tolerance = protocol.nsd_tolerance_mm if tolerance_mm is None else tolerance_mm
    voxel_ml = float(np.prod(spacing[:3])) / 1000.0
    true_voxels, pred_voxels = int(np.count_nonzero(truth)), int(np.count_nonzero(pred))
    return {
        "n_slices": int(truth.shape[2]),
        "true_voxels": true_voxels,
        "predicted_voxels": pred_voxels,
        "true_ml": true_voxels * voxel_ml,
        "predicted_ml": pred_voxels * voxel_ml,
        "volume_error_ml": (pred_voxels - true_voxels) * voxel_ml,
        **protocol.compute(pred, truth, spacing, tolerance),
        "abc2_true_ml": abc2_ml(truth, spacing)["abc2_ml"],
        "abc2_predicted_ml": abc2_ml(pred, spacing)["abc2_ml"],
        "true_positive_patient": true_voxels > 0,
        "predicted_positive_patient": pred_voxels > 0,
    }


def _ratio(numer: int, denom: int) -> float | None:
    return numer / denom if denom else None


def summarize_rows(rows: Sequence[dict], protocol: VolumeProtocol) -> dict:
    """Means and medians of each of `protocol`'s scores over the volumes where it is finite
    (with how many, and how many were infinite), volume errors, patient-level detection, and the
    agreement of ichseg's and ABC/2's volumes with the truth."""
    out: dict = {"n_patients": len(rows)}
    for key, _ in protocol.scores:
        values = np.array([float(r[key]) for r in rows], dtype=float)
        finite = values[np.isfinite(values)]
        out[f"{key}_mean"] = float(np.mean(finite)) if finite.size else None
        out[f"{key}_median"] = float(np.median(finite)) if finite.size else None
        out[f"{key}_defined_for"] = int(finite.size)
        out[f"{key}_infinite"] = int(np.count_nonzero(np.isinf(values)))
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
            "volume_agreement": volume_agreement(rows),
        }
    )
    return out


def mean_text(summary: dict, key: str, digits: int = 3) -> str:
    """A summary's mean of `key` with the volumes it is over, and the infinite values left out:
    `0.812 (6)`, `12.3 (4; 2 inf)`, `NA (0)`."""
    mean = summary.get(f"{key}_mean")
    value = "NA" if mean is None else f"{mean:.{digits}f}"
    infinite = summary.get(f"{key}_infinite", 0)
    extra = f"; {infinite} inf" if infinite else ""
    return f"{value} ({summary.get(f'{key}_defined_for', 0)}{extra})"


# The volumes set against the truth in `volume_agreement`: (name, row key, label, what it is).
VOLUME_ESTIMATES = (
    ("ichseg", "predicted_ml", "ichseg", "the predicted mask's voxels"),
    (
        "abc2_predicted",
        "abc2_predicted_ml",
        "ABC/2 (predicted mask)",
        "ABC/2 measured on the predicted mask",
    ),
    (
        "abc2_true",
        "abc2_true_ml",
        "ABC/2 (true mask)",
        "ABC/2 measured on the true mask (the bedside estimate)",
    ),
)


def _finite_or_none(stats: dict) -> dict:
    """JSON has no NaN: an undefined statistic (CCC of fewer than 3 volumes) is null."""
    return {
        k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in stats.items()
    }


def volume_agreement(rows: Sequence[dict]) -> dict:
    """The agreement (`ichseg.inference.volume_agreement`) of each of `VOLUME_ESTIMATES` with
    the true volume, over the volumes with a true bleed."""
    bleeding = [r for r in rows if r["true_voxels"] > 0]
    truth = [r["true_ml"] for r in bleeding]
    return {
        "over": "volumes with a true bleed",
        **{
            name: _finite_or_none(agreement(truth, [r[key] for r in bleeding]))
            for name, key, _, _ in VOLUME_ESTIMATES
        },
        "definitions": {
            **AGREEMENT_DEFINITIONS,
            **{name: what for name, _, _, what in VOLUME_ESTIMATES},
        },
    }
