"""Each architecture's selected checkpoints scored on a patient split's held-out volumes.

Only a `data.split=patient` sweep has held-out patients whose every slice is unseen; there each
architecture's fold models at the selected epoch are ensembled by `ichseg evaluate`
(`ichseg.inference.evaluate_volumes.evaluate`) over the test patients' full volumes (3-D Dice,
volume error in mL, patient-level detection). Given external data sources, the same ensembles
score every volume of each (`evaluate_external`): the report's external validation sections,
after `check_external_sources` made sure no external set holds the volumes the sweep trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ichseg.data.release import SUBTYPES
from ichseg.data.sources import Source
from ichseg.inference.evaluate_volumes import evaluate
from ichseg.inference.training_overlap import check_not_training_data
from ichseg.report.heldout_slices import checkpoints_at
from ichseg.report.selection import Selection
from ichseg.sweeps.local import read_cache_meta
from ichseg.sweeps.model import Sweep


@dataclass(frozen=True)
class VolumeResult:
    """One architecture's whole-volume scores on the held-out patients."""

    model: str
    name: str  # how the report names the model (`Sweep.names`)
    epoch: int
    folds: tuple[int, ...]
    folder: Path  # patients.csv and summary.json, taken into the report under its name
    summary: dict


@dataclass(frozen=True)
class ExternalResult:
    """Every selected architecture's whole-volume scores on one external data source."""

    facts: dict  # the source's own description (`Source.describe`)
    volumes: list[VolumeResult]


def patient_split_release(sweep: Sweep) -> tuple[str, str] | None:
    """(release root, cache folder) when the sweep was prepared with a patient split."""
    for job in sweep.jobs:
        meta = read_cache_meta(job)
        if meta is not None:
            if meta.get("cfg", {}).get("split") != "patient":
                return None
            return meta["release_root"], job.state["cache_dir"]
    return None


def _each_selected(
    sweep: Sweep, selection: Selection, prefix: str, out_dir: Path, **where
) -> list[VolumeResult]:
    """Each selected architecture's fold ensemble evaluated on whole volumes (`where`: the
    held-out split or an external source), its files in `out_dir/<prefix>_<model>`."""
    results = []
    for choice in selection.choices.values():
        if any(job.imported for job in sweep.jobs_of(choice.model)):
            continue  # an imported network predicted the exported slices only, not volumes
        pairs = checkpoints_at(sweep, choice.model, choice.epoch)
        folder = out_dir / f"{prefix}_{choice.model}"
        summary = evaluate([path for _, path in pairs], folder, progress=False, **where)
        folds = tuple(job.fold for job, _ in pairs)
        results.append(
            VolumeResult(
                choice.model,
                sweep.names.get(choice.model, choice.model),
                choice.epoch,
                folds,
                folder,
                summary,
            )
        )
    return results


def evaluate_volumes(sweep: Sweep, selection: Selection, out_dir: Path) -> list[VolumeResult]:
    """Score each selected architecture on whole held-out patients; [] unless split by patient."""
    found = patient_split_release(sweep)
    if found is None:
        return []
    release_root, cache_dir = found
    return _each_selected(
        sweep, selection, "patients", out_dir, splits=cache_dir, release_root=release_root
    )


def check_external_sources(sweep: Sweep, sources: list[tuple[str, Source]]) -> None:
    """Refuse, before anything is scored, an external source (named as given) that is, or holds
    volumes of, the release of a prepared cache the sweep's jobs trained on."""
    caches = list(
        dict.fromkeys(Path(j.state["cache_dir"]) for j in sweep.jobs if j.state.get("cache_dir"))
    )
    for where, source in sources:
        check_not_training_data(caches, source.open_release(), where, "report")


def evaluate_external(
    sweep: Sweep, selection: Selection, sources: list[Source], out_dir: Path
) -> list[ExternalResult]:
    """Score each selected architecture on every volume of each external source."""
    results = []
    for i, source in enumerate(sources):
        volumes = _each_selected(
            sweep, selection, f"external{i}_{source.name}", out_dir, source=source
        )
        facts = volumes[0].summary["source"] if volumes else {"title": source.name}
        results.append(ExternalResult(facts, volumes))
    return results


def _fmt(value: float | None, digits: int = 3) -> str:
    return "NA" if value is None else f"{value:.{digits}f}"


def volumes_markdown(results: list[VolumeResult]) -> str:
    """One row per architecture, definitions beside it."""
    tolerance = results[0].summary.get("nsd_tolerance_mm") if results else None
    lines = [
        "Each architecture's fold models at its selected epoch, ensembled (probabilities "
        "averaged), predict every slice of each volume; scores are over whole volumes "
        "(`ichseg.inference.volume_metrics`). 3-D Dice is left out of the mean for volumes with "
        "neither bleed nor prediction (they count for specificity); HD95 only where both masks "
        f"are non-empty; NSD at {tolerance} mm (0 where one mask is empty); RVD only where "
        "there is a bleed. Volume error = predicted − true mL. (n) = volumes the mean is over.",
        "",
        "| Architecture | Epoch | Folds | Volumes | 3-D Dice (n) | HD95 mm (n) | NSD (n) | "
        "RVD (n) | Mean abs. volume error (mL) | Patient sensitivity | Patient specificity "
        "| Files |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary
        lines.append(
            f"| {r.name} | {r.epoch} | {len(r.folds)} | {s['n_patients']} | "
            f"{_mean(s, 'dice_3d')} | {_mean(s, 'hd95_mm', 1)} | {_mean(s, 'nsd')} | "
            f"{_mean(s, 'rvd', 2)} | {_fmt(s['volume_abs_error_ml_mean'], 2)} | "
            f"{_fmt(s['patient_sensitivity'])} | {_fmt(s['patient_specificity'])} | "
            f"`{r.folder.name}/` |"
        )
    return "\n".join(lines) + "\n"


def _mean(summary: dict, key: str, digits: int = 3) -> str:
    return f"{_fmt(summary.get(f'{key}_mean'), digits)} ({summary.get(f'{key}_defined_for', 0)})"


def source_facts_text(facts: dict) -> str:
    """One line of a data source's facts: what it is, volumes, slices, spacing, label map."""
    if "volumes" not in facts:
        return f"{facts.get('title', facts.get('name', 'unknown'))} (no facts recorded)"
    low, high = facts["spacing_mm_min"], facts["spacing_mm_max"]
    spacing = " × ".join(
        f"{a:g}" if a == b else f"{a:g}–{b:g}" for a, b in zip(low, high, strict=True)
    )
    labels = ", ".join(f"{k} {v}" for k, v in facts["label_map"].items())
    synthetic = "; **synthetic phantom in this layout (not patient data)**" * bool(
        facts.get("synthetic")
    )
    binary = (facts.get("record") or {}).get("binary_labels")
    subtypes = facts["subtypes_from"] or (
        "nowhere: binary masks (binary_labels)" if binary else "nowhere: none in this source"
    )
    return (
        f"{facts['title']} (`{facts['name']}`; {facts['citation']}; licence: "
        f"{facts['licence']}){synthetic}: {facts['volumes']} volumes, {facts['slices']} axial "
        f"slices, voxel spacing {spacing} mm, label map {labels} (any label > 0 is the ICH "
        f"target; subtypes from {subtypes})"
    )


def external_markdown(result: ExternalResult) -> str:
    """An external set's section: its facts, the scores, Dice per subtype where it has them."""
    lines = [f"Data: {source_facts_text(result.facts)}.", "", volumes_markdown(result.volumes)]
    per = [(r, r.summary.get("per_subtype")) for r in result.volumes]
    if any(table for _, table in per):
        lines += [
            "3-D Dice mean (volumes) per subtype, a volume counting for each subtype it shows:",
            "",
            "| Architecture | " + " | ".join(SUBTYPES) + " |",
            "|---|" + "---|" * len(SUBTYPES),
        ]
        for r, table in per:
            cells = [_mean(table[n], "dice_3d") if n in (table or {}) else "—" for n in SUBTYPES]
            lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
        lines.append("")
    figures = [f"![{r.model}]({r.folder.name}/dice_vs_volume.png)" for r in result.volumes]
    return "\n".join([*lines, *figures]) + "\n"
