"""`ichseg evaluate`: whole-volume scores on the held-out patients of a patient-mode split.

Each test patient's scan is predicted whole by a `VolumeEnsemble` (every slice, not only the
balanced set's) and compared with the release's mask:
- 3-D Dice `2|P∩T| / (|P| + |T|)` per patient; undefined (NaN) when prediction and mask are both
  empty, so the mean Dice is over patients where it is defined, and patients without bleed and
  without prediction are scored by specificity instead;
- volume error `predicted mL - true mL` (voxels × prod(zooms) / 1000);
- patient-level detection: a patient is predicted positive when any voxel is predicted, truly
  positive when the mask has any voxel; sensitivity TP / (TP + FN), specificity TN / (TN + FP),
  NaN when there is no patient of that class.
Only a `patient` split makes this meaningful: with a `slice` split the test patients' other
slices sit in the training folds. The counts are numpy's, not MONAI's: MONAI counts in float32,
exact only below 2**24 voxels, and a whole scan can hold more.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ichseg.atomic import atomic_write_text
from ichseg.data.prepare import read_cache_json
from ichseg.data.release import Release
from ichseg.errors import IchsegError
from ichseg.inference.checkpoint import SPLIT_KEY, Checkpoint
from ichseg.inference.run import prepare_outdir, progress_bar
from ichseg.inference.volumes import VolumeEnsemble
from ichseg.runtime import pick_device

CSV_COLUMNS = (
    "patient",
    "n_slices",
    "true_voxels",
    "predicted_voxels",
    "true_ml",
    "predicted_ml",
    "volume_error_ml",
    "dice_3d",
    "true_positive_patient",
    "predicted_positive_patient",
)


def heldout_patients(splits: str | os.PathLike, release: Release) -> tuple[list[int], Path]:
    """Patients of the test split in `splits` (a prepared cache folder or its splits.json)."""
    path = Path(splits)
    if path.is_dir():
        path = path / "splits.json"
    if not path.is_file():
        raise IchsegError(f"{path}: expected splits.json of a prepared cache, found nothing")
    data = read_cache_json(path)
    mode = data.get("mode")
    if mode != "patient":
        raise IchsegError(
            f"{path}: split mode is {mode!r}, expected 'patient' (with a slice split the test "
            "patients' other slices are in the training folds); prepare with --split patient"
        )
    meta_path = path.parent / "meta.json"
    if meta_path.is_file():
        made_from = read_cache_json(meta_path).get("csv_sha256")
        if made_from and made_from != release.csv_sha256:
            raise IchsegError(
                f"{meta_path}: this cache was prepared from another release than {release.root} "
                "(the diagnosis CSVs differ)"
            )
    ids = data.get("test")
    try:
        patients = sorted({int(str(sid).split("_")[0]) for sid in ids or []})
    except ValueError:
        raise IchsegError(f"{path}: test ids must look like PPP_SS") from None
    if not patients:
        raise IchsegError(f"{path}: expected test slice ids, found none")
    missing = [p for p in patients if p not in release.patients]
    if missing:
        raise IchsegError(
            f"{path}: test patient(s) {missing[:5]} are not in {release.csv_path} "
            f"(patients {release.patients[0]}..{release.patients[-1]})"
        )
    return patients, path


def check_never_seen(
    checkpoints: Sequence[Checkpoint], patients: Sequence[int], where: Path
) -> None:
    """Raise unless every checkpoint's own split record shows it never trained or validated on
    any of `patients` (the held-out patients of `where`)."""
    for checkpoint in checkpoints:
        split = checkpoint.split
        if split is None or "train_patients" not in split or "val_patients" not in split:
            raise IchsegError(
                f"checkpoint {checkpoint.path}: carries no record of the patients it was trained "
                f"on ('{SPLIT_KEY}'), so nothing proves it never saw the test patients of {where}; "
                "evaluate checkpoints trained by this version of ichseg"
            )
        seen = sorted(set(split["train_patients"]) | set(split["val_patients"]))
        overlap = sorted(set(seen) & set(patients))
        if overlap:
            raise IchsegError(
                f"checkpoint {checkpoint.path}: trained on a {split.get('mode')!r} split (seed "
                f"{split.get('split_seed')}, fold {split.get('fold')}) that holds {len(overlap)} "
                f"of the {len(patients)} patients of {where} (e.g. {overlap[:5]}); evaluate "
                "on the patient-split cache the checkpoint was trained with"
            )


def split_record(checkpoint: Checkpoint) -> dict:
    """What summary.json keeps of a checkpoint's split: everything but the patient lists."""
    split = dict(checkpoint.split or {})
    for key in ("train_patients", "val_patients"):
        split[f"n_{key}"] = len(split.pop(key, []))
    return {"checkpoint": str(checkpoint.path), **split}


def dice_3d(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P| + |T|) over the whole volume; NaN when both are empty."""
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(pred & truth)) / total


def patient_row(patient: int, pred: np.ndarray, truth: np.ndarray, zooms: Sequence[float]) -> dict:
    """One patient's CSV row: voxels, mL, volume error, 3-D Dice, detection flags."""
    voxel_ml = float(np.prod(zooms[:3])) / 1000.0
    true_voxels, pred_voxels = int(np.count_nonzero(truth)), int(np.count_nonzero(pred))
    return {
        "patient": patient,
        "n_slices": int(truth.shape[2]),
        "true_voxels": true_voxels,
        "predicted_voxels": pred_voxels,
        "true_ml": true_voxels * voxel_ml,
        "predicted_ml": pred_voxels * voxel_ml,
        "volume_error_ml": (pred_voxels - true_voxels) * voxel_ml,
        "dice_3d": dice_3d(pred, truth),
        "true_positive_patient": true_voxels > 0,
        "predicted_positive_patient": pred_voxels > 0,
    }


def _ratio(numer: int, denom: int) -> float | None:
    return numer / denom if denom else None


def summarize_rows(rows: Sequence[dict]) -> dict:
    """Mean 3-D Dice (where defined), volume errors and patient-level detection rates."""
    dices = [r["dice_3d"] for r in rows if not math.isnan(r["dice_3d"])]
    errors = np.array([r["volume_error_ml"] for r in rows], dtype=float)
    truth = np.array([r["true_positive_patient"] for r in rows], dtype=bool)
    pred = np.array([r["predicted_positive_patient"] for r in rows], dtype=bool)
    tp, fn = int(np.sum(truth & pred)), int(np.sum(truth & ~pred))
    tn, fp = int(np.sum(~truth & ~pred)), int(np.sum(~truth & pred))
    return {
        "n_patients": len(rows),
        "dice_3d_mean": float(np.mean(dices)) if dices else None,
        "dice_3d_median": float(np.median(dices)) if dices else None,
        "dice_3d_defined_for": len(dices),
        "volume_error_ml_mean": float(errors.mean()) if len(rows) else None,
        "volume_abs_error_ml_mean": float(np.abs(errors).mean()) if len(rows) else None,
        "volume_abs_error_ml_median": float(np.median(np.abs(errors))) if len(rows) else None,
        "patient_sensitivity": _ratio(tp, tp + fn),
        "patient_specificity": _ratio(tn, tn + fp),
        "patient_counts": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
    }


def _csv_text(rows: Sequence[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: (f"{v:.6g}" if isinstance(v, float) else int(v) if isinstance(v, bool) else v)
                for k, v in row.items()
            }
        )
    return out.getvalue()


def evaluate(
    checkpoints: Sequence[str | os.PathLike],
    release_root: str | os.PathLike,
    splits: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    flip: bool = False,
    batch_size: int = 16,
    device: str | None = None,
    precision: str = "auto",
    allow_non_hu: bool = False,
    on_patient: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> dict:
    """Predict the split's test patients whole; write `patients.csv` and `summary.json`.
    `allow_non_hu` reads scans that do not look like CT in HU (`ichseg.data.hounsfield`)."""
    target = pick_device(device)
    model = VolumeEnsemble.load(checkpoints, target, flip, batch_size, precision)
    ensemble = model.ensemble
    release = Release.open(release_root, allow_non_hu)
    patients, splits_path = heldout_patients(splits, release)
    check_never_seen(ensemble.checkpoints, patients, splits_path)
    out = prepare_outdir(outdir)
    rows = []
    with progress_bar(len(patients), "patients", progress) as advance:
        for patient in patients:
            volume = release.load_patient(patient)
            row = patient_row(patient, model.predict(volume.hu), volume.mask, volume.zooms)
            rows.append(row)
            advance()
            if on_patient is not None:
                on_patient(row)
    summary = {
        **summarize_rows(rows),
        "definitions": {
            "dice_3d": "2|P∩T|/(|P|+|T|) per patient over the whole volume; NaN (left out of "
            "the mean) when both are empty",
            "volume_error_ml": "predicted minus true, voxels × prod(zooms) / 1000",
            "patient_detection": "positive when any voxel is predicted / has a mask voxel",
        },
        "release": str(release.root),
        "splits": str(splits_path),
        "patients": patients,
        "checkpoints": [str(c.path) for c in ensemble.checkpoints],
        "checkpoint_splits": [split_record(c) for c in ensemble.checkpoints],
        "flip_tta": flip,
        "threshold": ensemble.threshold,
        "device": str(target),
        "precision": ensemble.precision,
        "allow_non_hu": allow_non_hu,
    }
    # The CSV first: summary.json is the marker of a finished evaluation.
    atomic_write_text(out / "patients.csv", _csv_text(rows))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary
