"""`ichseg evaluate`: whole-volume scores of fold-ensembled checkpoints, in two modes.

- Held-out patients (`splits`): the test patients of a patient-mode split, read from the source
  the cache was prepared from (its meta.json records it); every checkpoint must prove it never
  trained or validated on them. Only a `patient` split makes this meaningful: with a `slice`
  split the test patients' other slices sit in the training folds.
- External validation (`source`): every volume of another data source's folder (patient =
  volume), e.g. a model trained on PhysioNet scored on INSTANCE 2022 or BHSD.
Each volume is predicted whole by a `VolumeEnsemble` (every slice, in the training orientation,
in fp32 unless asked otherwise) and scored under one protocol of
`ichseg.inference.volume_metrics` (Dice, Hausdorff distance and NSD in mm, RVD, volume error in
mL, ABC/2 from both masks, patient-level detection), overall and per subtype where the source
has subtypes, with the agreement of ichseg's and ABC/2's volumes with the true ones; the rows go
to patients.csv, the means to summary.json, per-volume Dice against true bleed volume to
dice_vs_volume.png and the Bland-Altman plots to bland_altman.png, in a folder that is missing,
empty or holds an earlier evaluation.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ichseg.arguments import output_dir
from ichseg.atomic import (
    atomic_write_text,
    check_replaceable,
    created_folders_removed_on_failure,
)
from ichseg.checkpoint import SPLIT_KEY, Checkpoint
from ichseg.data.release import SUBTYPES, VolumeRelease, read_json_object
from ichseg.data.sources import Source, source_from_record
from ichseg.errors import IchsegError
from ichseg.inference.network_name import network_name
from ichseg.inference.run import progress_bar, warn_collapsed
from ichseg.inference.training_overlap import check_not_trained_on
from ichseg.inference.volume_metrics import (
    DEFAULT_VOLUME_PROTOCOL,
    VOLUME_ESTIMATES,
    VOLUME_PROTOCOLS,
    VolumeProtocol,
    summarize_rows,
    volume_protocol,
    volume_scores,
)
from ichseg.inference.volumes import VolumeEnsemble
from ichseg.runtime import pick_device
from ichseg.visualize import plain_log_ticks, save_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_NAME = "dice_vs_volume.png"
BLAND_ALTMAN_NAME = "bland_altman.png"
# What an evaluation writes: a folder holding all three is one an evaluation may write again.
EVALUATION_FILES = ("patients.csv", FIGURE_NAME, "summary.json")


def _splits_file(splits: str | os.PathLike) -> Path:
    path = Path(splits)
    if path.is_dir():
        path = path / "splits.json"
    if not path.is_file():
        raise IchsegError(f"{path}: expected splits.json of a prepared cache, found nothing")
    return path


def cache_source(splits: str | os.PathLike, root: str | os.PathLike | None = None) -> Source:
    """The data source a prepared cache was made from (its meta.json), at `root` if given."""
    meta_path = _splits_file(splits).parent / "meta.json"
    if not meta_path.is_file():
        raise IchsegError(f"{meta_path}: missing; expected the meta.json of a prepared cache")
    record = read_json_object(meta_path).get("source_facts", {}).get("record")
    if record is None:
        raise IchsegError(
            f"{meta_path}: records no data source (a cache of an earlier ichseg); prepare it again"
        )
    return source_from_record(record, str(meta_path), None if root is None else str(root))


def heldout_patients(splits: str | os.PathLike, release: VolumeRelease) -> tuple[list[int], Path]:
    """Patients of the test split in `splits` (a prepared cache folder or its splits.json)."""
    path = _splits_file(splits)
    data = read_json_object(path)
    mode = data.get("mode")
    if mode != "patient":
        raise IchsegError(
            f"{path}: split mode is {mode!r}, expected 'patient' (with a slice split the test "
            "patients' other slices are in the training folds); prepare with --split patient"
        )
    meta_path = path.parent / "meta.json"
    if meta_path.is_file():
        made_from = read_json_object(meta_path).get("labels_sha256")
        if made_from and made_from != release.labels_sha256:
            raise IchsegError(
                f"{meta_path}: this cache was prepared from another release than {release.root} "
                "(the labels differ)"
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
            f"{path}: test patient(s) {missing[:5]} are not in {release.root} "
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


def _volume_subtypes(release: VolumeRelease, patient: int) -> list[str]:
    """The subtypes any slice of the patient's volume shows (none where the source has none)."""
    flags = [any(lab.subtypes[i] for lab in release.labels_for(patient)) for i in range(5)]
    return [name for name, flag in zip(SUBTYPES, flags, strict=True) if flag]


def per_subtype(rows: Sequence[dict], protocol: VolumeProtocol) -> dict:
    """`summarize_rows` over the volumes showing each subtype (those that show any)."""
    out = {}
    for name in SUBTYPES:
        members = [r for r in rows if name in r["subtypes"]]
        if members:
            out[name] = summarize_rows(members, protocol)
    return out


def _csv_columns(protocol: VolumeProtocol) -> tuple[str, ...]:
    """patients.csv's columns under `protocol`: its scores, and the protocol and NSD tolerance
    on every row."""
    return (
        "patient",
        "case",
        "n_slices",
        "true_voxels",
        "predicted_voxels",
        "true_ml",
        "predicted_ml",
        "volume_error_ml",
        *(key for key, _ in protocol.scores),
        "abc2_true_ml",
        "abc2_predicted_ml",
        "true_positive_patient",
        "predicted_positive_patient",
        "subtypes",
        "protocol",
        "nsd_tolerance_mm",
    )


def _csv_text(rows: Sequence[dict], protocol: VolumeProtocol, tolerance_mm: float) -> str:
    """One row per volume; NaN reads `nan` and an infinite distance `inf`."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_csv_columns(protocol), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        cells = {
            **row,
            "subtypes": ";".join(row["subtypes"]),
            "protocol": protocol.name,
            "nsd_tolerance_mm": tolerance_mm,
        }
        writer.writerow(
            {
                k: (f"{v:.6g}" if isinstance(v, float) else int(v) if isinstance(v, bool) else v)
                for k, v in cells.items()
            }
        )
    return out.getvalue()


def dataset_label(facts: dict) -> str:
    """What a source's volumes are called in figures and messages; says when they are synthetic."""
    title = str(facts.get("title", facts.get("name", "unknown data")))
    return f"{title}, synthetic phantom in its layout" if facts.get("synthetic") else title


def _figure_title(summary: dict, n_bleeding: int) -> str:
    """The network, the checkpoints, the data and the mode of `summary`, and what is shown."""
    n = len(summary["checkpoints"])
    return (
        f"{summary['network']} ({n} checkpoint{'s' * (n != 1)}) on "
        f"{dataset_label(summary['source'])} ({summary['mode']}): "
        f"{n_bleeding} volumes with a bleed"
    )


def dice_volume_figure(
    rows: Sequence[dict],
    summary: dict,
    protocol: VolumeProtocol = VOLUME_PROTOCOLS[DEFAULT_VOLUME_PROTOCOL],
) -> Figure:
    """Per-volume Dice (of `protocol`) against true bleed volume (mL, log scale) of the volumes
    with a bleed, titled with the network, the checkpoints, the data and the mode of `summary`."""
    from matplotlib.figure import Figure

    bleeding = [r for r in rows if r["true_voxels"] > 0]
    fig = Figure(figsize=(5.5, 4.0), dpi=120, layout="tight")
    ax = fig.add_subplot()
    volumes = [r["true_ml"] for r in bleeding]
    ax.scatter(volumes, [r[protocol.dice_key] for r in bleeding], s=18)
    ax.set_xlabel("true bleed volume (mL)")
    ax.set_ylabel(dict(protocol.scores)[protocol.dice_key])
    ax.set_ylim(-0.02, 1.02)
    if bleeding and min(volumes) > 0:
        plain_log_ticks(ax.xaxis, min(volumes), max(volumes))
    ax.set_title(_figure_title(summary, len(bleeding)), fontsize=9)
    return fig


def bland_altman_figure(rows: Sequence[dict], summary: dict) -> Figure:
    """One Bland-Altman panel per volume estimate (ichseg, ABC/2 on the predicted mask, ABC/2 on
    the true mask) over the volumes with a bleed: each volume's estimate minus its true volume
    against their mean (mL), with the bias and the 95% limits of agreement of `summary`."""
    from matplotlib.figure import Figure

    bleeding = [r for r in rows if r["true_voxels"] > 0]
    agreement = summary["volume_agreement"]
    fig = Figure(figsize=(11.0, 4.0), dpi=120, layout="constrained")
    # Each panel on its own scale: ABC/2 of the true mask may err by 1 mL where ichseg errs by 50.
    axes = fig.subplots(1, len(VOLUME_ESTIMATES))
    truth = np.array([r["true_ml"] for r in bleeding], dtype=float)
    for ax, (name, key, label, _) in zip(axes, VOLUME_ESTIMATES, strict=True):
        estimate = np.array([r[key] for r in bleeding], dtype=float)
        ax.scatter((truth + estimate) / 2, estimate - truth, s=14)
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        stats = agreement[name]
        for stat, style in (("bias_ml", "-"), ("loa_low_ml", "--"), ("loa_high_ml", "--")):
            if stats.get(stat) is not None:
                ax.axhline(stats[stat], color="C3", linestyle=style, linewidth=1.0)
        ax.set_title(f"{label}: {_agreement_caption(stats)}", fontsize=9)
        ax.set_xlabel("mean of estimate and true volume (mL)")
    axes[0].set_ylabel("estimate − true volume (mL)")
    fig.suptitle(
        f"Bland-Altman, {_figure_title(summary, len(bleeding))} (red: bias, dashed: 95% limits "
        "of agreement)",
        fontsize=10,
    )
    return fig


def _agreement_caption(stats: dict) -> str:
    """The bias and limits of agreement of one estimate, as the panel's title says them."""
    if stats.get("bias_ml") is None:
        return "no volume with a bleed"
    if stats.get("loa_low_ml") is None:
        return f"bias {stats['bias_ml']:+.2f} mL (one volume: no limits)"
    return (
        f"bias {stats['bias_ml']:+.2f} mL, 95% limits {stats['loa_low_ml']:+.2f} to "
        f"{stats['loa_high_ml']:+.2f} mL"
    )


def evaluate(
    checkpoints: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    *,
    splits: str | os.PathLike | None = None,
    source: Source | None = None,
    release_root: str | os.PathLike | None = None,
    metrics: str = DEFAULT_VOLUME_PROTOCOL,
    nsd_tolerance_mm: float | None = None,
    flip: bool = False,
    batch_size: int = 16,
    device: str | None = None,
    precision: str = "fp32",
    allow_non_hu: bool = False,
    on_patient: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> dict:
    """Score the held-out patients of `splits`, or every volume of `source` (one of the two),
    under the volume protocol `metrics` with NSD at `nsd_tolerance_mm` (default: the
    protocol's); write `patients.csv`, `dice_vs_volume.png`, `bland_altman.png` and
    `summary.json` into `outdir`. `allow_non_hu` reads scans that do not look like CT in HU
    (`ichseg.scans.hounsfield`)."""
    if (splits is None) == (source is None):
        raise IchsegError("evaluate: give either a patient-split cache or an external source")
    protocol = volume_protocol(metrics)
    tolerance = protocol.nsd_tolerance_mm if nsd_tolerance_mm is None else nsd_tolerance_mm
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise IchsegError(f"--nsd-tolerance-mm: expected a positive number, found {tolerance}")
    # As `ichseg report --out`: a folder of the user's (their own summary.json or patients.csv)
    # is refused before any volume is scored, never written into.
    check_replaceable(Path(outdir), EVALUATION_FILES)
    target = pick_device(device)
    model = VolumeEnsemble.load(
        checkpoints, target, flip=flip, batch_size=batch_size, precision=precision
    )
    ensemble = model.ensemble
    warn_collapsed(ensemble.checkpoints, "evaluate")
    if source is None:
        source = cache_source(splits, release_root)
        release = source.open_release(allow_non_hu)
        patients, splits_path = heldout_patients(splits, release)
        check_never_seen(ensemble.checkpoints, patients, splits_path)
        mode = {"mode": "held-out patients", "splits": str(splits_path)}
    else:
        release = source.open_release(allow_non_hu)
        check_not_trained_on(ensemble.checkpoints, release)
        patients = list(release.patients)
        mode = {"mode": "external"}
    # A run that fails before writing anything leaves no folder it made.
    with created_folders_removed_on_failure(outdir):
        out = output_dir(outdir, "output folder", create=True)
        rows = []
        with progress_bar(len(patients), "volumes", progress) as advance:
            for patient in patients:
                volume = release.load_patient(patient)
                pred = model.predict(volume.hu)
                scores = volume_scores(pred, volume.mask, volume.zooms, protocol, tolerance)
                row = {"patient": patient, "case": release.case_name(patient), **scores}
                row["subtypes"] = _volume_subtypes(release, patient)
                rows.append(row)
                advance()
                if on_patient is not None:
                    on_patient(row)
        facts = source.facts(release)
        summary = {
            **summarize_rows(rows, protocol),
            "per_subtype": per_subtype(rows, protocol) if release.subtypes_from else None,
            "volume_protocol": protocol.describe(tolerance),
            "nsd_tolerance_mm": tolerance,
            **mode,
            "source": facts,
            "release": str(release.root),
            "patients": patients,
            "checkpoints": [str(c.path) for c in ensemble.checkpoints],
            "network": network_name((c.path, c.net_config) for c in ensemble.checkpoints),
            "checkpoint_splits": [split_record(c) for c in ensemble.checkpoints],
            "flip_tta": flip,
            "threshold": ensemble.threshold,
            "device": str(target),
            "precision": ensemble.precision,
            "allow_non_hu": allow_non_hu,
        }
        # The CSV and figures first: summary.json is the marker of a finished evaluation.
        atomic_write_text(out / "patients.csv", _csv_text(rows, protocol, tolerance))
        save_png(dice_volume_figure(rows, summary, protocol), out / FIGURE_NAME)
        save_png(bland_altman_figure(rows, summary), out / BLAND_ALTMAN_NAME)
        # Every undefined value is null by now: JSON has no NaN or Infinity.
        text = json.dumps(summary, indent=1, allow_nan=False)
        atomic_write_text(out / "summary.json", text + "\n")
    return summary
