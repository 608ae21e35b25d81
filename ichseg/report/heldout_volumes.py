"""Each architecture's selected checkpoints scored on a patient split's held-out volumes.

Only a `data.split=patient` sweep has held-out patients whose every slice is unseen; there each
architecture's fold models at the selected epoch are ensembled by `ichseg evaluate`
(`ichseg.inference.heldout_volumes.evaluate`) over the test patients' full volumes (3-D Dice,
volume error in mL, patient-level detection).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ichseg.inference.heldout_volumes import evaluate
from ichseg.nnunet.results import is_imported
from ichseg.report.heldout_slices import checkpoints_at
from ichseg.report.selection import Selection
from ichseg.report.sources.local import read_cache_meta
from ichseg.report.sources.model import Sweep
from ichseg.report.table import display_name


@dataclass(frozen=True)
class VolumeResult:
    """One architecture's whole-volume scores on the held-out patients."""

    model: str
    epoch: int
    folds: tuple[int, ...]
    folder: Path  # patients.csv and summary.json, taken into the report under its name
    summary: dict


def patient_split_release(sweep: Sweep) -> tuple[str, str] | None:
    """(release root, cache folder) when the sweep was prepared with a patient split."""
    for job in sweep.jobs:
        meta = read_cache_meta(job)
        if meta is not None:
            if meta.get("cfg", {}).get("split") != "patient":
                return None
            return meta["release_root"], job.state["cache_dir"]
    return None


def evaluate_volumes(sweep: Sweep, selection: Selection, out_dir: Path) -> list[VolumeResult]:
    """Score each selected architecture on whole held-out patients; [] unless split by patient."""
    found = patient_split_release(sweep)
    if found is None:
        return []
    release_root, cache_dir = found
    results = []
    for choice in selection.choices.values():
        if any(is_imported(job) for job in sweep.jobs_of(choice.model)):
            continue  # nnU-Net predicted the exported slices only, not whole volumes
        pairs = checkpoints_at(sweep, choice.model, choice.epoch)
        folder = out_dir / f"patients_{choice.model}"
        summary = evaluate(
            [path for _, path in pairs],
            folder,
            splits=cache_dir,
            release_root=release_root,
            progress=False,
        )
        folds = tuple(job.fold for job, _ in pairs)
        results.append(VolumeResult(choice.model, choice.epoch, folds, folder, summary))
    return results


def _fmt(value: float | None, digits: int = 3) -> str:
    return "NA" if value is None else f"{value:.{digits}f}"


def volumes_markdown(results: list[VolumeResult]) -> str:
    """The report section: one row per architecture, definitions beside it."""
    lines = [
        "Each architecture's fold models at its selected epoch, ensembled (probabilities "
        "averaged), predict every slice of each held-out patient; scores are over whole "
        "volumes. 3-D Dice is left out of the mean for patients with neither bleed nor "
        "prediction (they count for specificity). Volume error = predicted − true mL.",
        "",
        "| Architecture | Epoch | Folds | Patients | 3-D Dice mean (defined for) | "
        "Mean abs. volume error (mL) | Patient sensitivity | Patient specificity | Files |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary
        lines.append(
            f"| {display_name(r.model)} | {r.epoch} | {len(r.folds)} | {s['n_patients']} | "
            f"{_fmt(s['dice_3d_mean'])} ({s['dice_3d_defined_for']}) | "
            f"{_fmt(s['volume_abs_error_ml_mean'], 2)} | {_fmt(s['patient_sensitivity'])} | "
            f"{_fmt(s['patient_specificity'])} | `{r.folder.name}/` |"
        )
    return "\n".join(lines) + "\n"
