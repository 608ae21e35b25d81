"""Each architecture's selected checkpoints scored on a patient split's held-out volumes.

Only a `data.split=patient` sweep has held-out patients whose every slice is unseen; there each
architecture's fold models at the selected epoch are ensembled by `ichseg evaluate`
(`ichseg.inference.evaluate.evaluate`, in fp32) over the test patients' full volumes
(the scores of a volume protocol, volume error in mL, patient-level detection, the agreement of
ichseg's and ABC/2's volumes with the true ones). Given external data sources, the same
ensembles score every volume of each (`evaluate_external`): the report's external validation
sections, after `check_external_sources` made sure no external set holds the volumes the sweep
trained on. Held-out patients are scored under the `ichseg` protocol and an external source
under the one its own challenge published (`protocol_for_source`), unless the report is given
another (`--volume-metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ichseg.data.release import SUBTYPES
from ichseg.data.sources import Source
from ichseg.inference.evaluate import BLAND_ALTMAN_NAME, FIGURE_NAME, evaluate
from ichseg.inference.training_overlap import check_not_training_data
from ichseg.inference.volume_metrics import (
    COMMON_DEFINITIONS,
    DEFAULT_VOLUME_PROTOCOL,
    VOLUME_ESTIMATES,
    mean_text,
    protocol_for_source,
    volume_protocol,
)
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


def score_heldout_volumes(
    sweep: Sweep, selection: Selection, out_dir: Path, metrics: str | None = None
) -> list[VolumeResult]:
    """Score each selected architecture on whole held-out patients under the volume protocol
    `metrics` (default: ichseg's); [] unless split by patient."""
    found = patient_split_release(sweep)
    if found is None:
        return []
    release_root, cache_dir = found
    return _each_selected(
        sweep,
        selection,
        "patients",
        out_dir,
        splits=cache_dir,
        release_root=release_root,
        metrics=metrics or DEFAULT_VOLUME_PROTOCOL,
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
    sweep: Sweep,
    selection: Selection,
    sources: list[Source],
    out_dir: Path,
    metrics: str | None = None,
) -> list[ExternalResult]:
    """Score each selected architecture on every volume of each external source, under the
    volume protocol `metrics` (default: the one the source's challenge published, else
    ichseg's)."""
    results = []
    for i, source in enumerate(sources):
        volumes = _each_selected(
            sweep,
            selection,
            f"external{i}_{source.name}",
            out_dir,
            source=source,
            metrics=metrics or protocol_for_source(source.name).name,
        )
        facts = volumes[0].summary["source"] if volumes else {"title": source.name}
        results.append(ExternalResult(facts, volumes))
    return results


def _fmt(value: float | None, digits: int = 3) -> str:
    return "NA" if value is None else f"{value:.{digits}f}"


def _cell(text: str) -> str:
    """`text` inside a markdown table cell (|RVD| would end the cell)."""
    return text.replace("|", "\\|")


def protocol_markdown(summary: dict, source_name: str | None = None) -> str:
    """How a section's whole volumes were scored: the protocol, its tolerance, its definitions,
    the precision; for an external source whose challenge published the protocol, says so."""
    described = summary["volume_protocol"]
    protocol = volume_protocol(described["name"])
    if source_name is not None and source_name in protocol.official_for:
        how = (
            f"Scored with {protocol.challenge}'s official definitions (the `{protocol.name}` "
            "volume metrics, the default for this source; `--volume-metrics NAME` chooses "
            "another)"
        )
    else:
        how = f"Scored with the `{protocol.name}` volume metrics, {protocol.title}"
    definitions = "; ".join(
        f"{label}: {described['definitions'][key]}" for key, label in protocol.scores
    )
    return (
        f"{how}, NSD at {described['nsd_tolerance_mm']:g} mm, predicted in "
        f"{summary['precision']}: {definitions}. Means leave out undefined (NaN) and infinite "
        "values; (n) = the volumes a mean is over, with the infinite ones left out counted "
        "(k inf). Volume error = predicted − true mL."
    )


def volumes_markdown(results: list[VolumeResult], source_name: str | None = None) -> str:
    """A whole-volume section's body: how it was scored, one row per architecture under the
    section's protocol, Dice per subtype, the volume agreement and the figures."""
    if not results:
        return "No architecture scored: an imported network predicted the exported slices only.\n"
    described = results[0].summary["volume_protocol"]
    protocol = volume_protocol(described["name"])
    tolerance = described["nsd_tolerance_mm"]
    labels = [
        f"{_cell(label)}{f' at {tolerance:g} mm' * (key == 'nsd')} (n)"
        for key, label in protocol.scores
    ]
    lines = [
        "Each architecture's fold models at its selected epoch, ensembled (probabilities "
        "averaged), predict every slice of each volume; scores are over whole volumes "
        "(`ichseg.inference.volume_metrics`). "
        + protocol_markdown(results[0].summary, source_name),
        "",
        "| Architecture | Epoch | Folds | Volumes | "
        + " | ".join(labels)
        + " | Mean abs. volume error (mL) | Patient sensitivity | Patient specificity | Files |",
        "|---|---|---|---|" + "---|" * len(labels) + "---|---|---|---|",
    ]
    for r in results:
        s = r.summary
        scores = " | ".join(
            mean_text(s, key, 1 if key.endswith("_mm") else 3) for key, _ in protocol.scores
        )
        lines.append(
            f"| {r.name} | {r.epoch} | {len(r.folds)} | {s['n_patients']} | {scores} | "
            f"{_fmt(s['volume_abs_error_ml_mean'], 2)} | "
            f"{_fmt(s['patient_sensitivity'])} | {_fmt(s['patient_specificity'])} | "
            f"`{r.folder.name}/` |"
        )
    lines += ["", *_per_subtype_dice(results, protocol.scores[0]), *_agreement_lines(results)]
    lines += [
        f"![{r.name}: {protocol.scores[0][1]} against true volume]({r.folder.name}/{FIGURE_NAME}) "
        f"![{r.name}: Bland-Altman]({r.folder.name}/{BLAND_ALTMAN_NAME})"
        for r in results
    ]
    return "\n".join(lines) + "\n"


def _per_subtype_dice(results: list[VolumeResult], dice: tuple[str, str]) -> list[str]:
    """The protocol's Dice per subtype where the source has subtypes."""
    per = [(r, r.summary.get("per_subtype")) for r in results]
    if not any(table for _, table in per):
        return []
    key, label = dice
    lines = [
        f"{label} mean (volumes) per subtype, a volume counting for each subtype it shows:",
        "",
        "| Architecture | " + " | ".join(SUBTYPES) + " |",
        "|---|" + "---|" * len(SUBTYPES),
    ]
    for r, table in per:
        cells = [mean_text(table[n], key) if n in (table or {}) else "—" for n in SUBTYPES]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _agreement_cells(stats: dict) -> str:
    """n, MAE, median AE, bias, limits of agreement, CCC [CI] and within share of one estimate."""
    if not stats.get("n"):
        return "0 | NA | NA | NA | NA | NA | NA"
    ccc = _fmt(stats["ccc"])
    if stats["ccc_low"] is not None:
        ccc += f" [{stats['ccc_low']:.3f}, {stats['ccc_high']:.3f}]"
    loa = (
        "NA"
        if stats["loa_low_ml"] is None
        else f"{stats['loa_low_ml']:+.2f} to {stats['loa_high_ml']:+.2f}"
    )
    return (
        f"{stats['n']} | {stats['mae_ml']:.2f} | {stats['median_ae_ml']:.2f} | "
        f"{stats['bias_ml']:+.2f} | {loa} | {ccc} | {stats['within_share']:.0%}"
    )


def _estimate_rows(results: list[VolumeResult]) -> list[tuple[str, str, VolumeResult]]:
    """(row label, estimate name, result) of each architecture's volumes and ABC/2 on its
    predicted mask, then ABC/2 on the true mask once (the same for every architecture)."""
    rows = [
        (f"{r.name}: {label}", name, r)
        for r in results
        for name, _, label, _ in VOLUME_ESTIMATES
        if name != "abc2_true"
    ]
    label = next(label for name, _, label, _ in VOLUME_ESTIMATES if name == "abc2_true")
    return [*rows, (f"{label}, the bedside estimate", "abc2_true", results[0])]


def _agreement_lines(results: list[VolumeResult]) -> list[str]:
    """The volume agreement table, each estimate against the true volume over the volumes with
    a true bleed; then MAE and CCC per subtype where the source has subtypes."""
    first = results[0].summary["volume_agreement"]
    definitions = first["definitions"]
    lines = [
        f"Volume agreement with the true (planimetric) volume, over the {first['ichseg']['n']} "
        f"{first['over']} (volumes without one are left out). MAE and median AE: mean and "
        f"median |estimate − truth|; {definitions['bias_ml']}; {definitions['loa_ml']} (LoA); "
        f"CCC: {definitions['ccc']}; within: {definitions['within_share']}. "
        f"{COMMON_DEFINITIONS['abc2_ml']}.",
        "",
        "| Estimate | n | MAE (mL) | Median AE (mL) | Bias (mL) | 95% LoA (mL) | CCC [95% CI] "
        "| Within ±10% or 5 mL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, name, r in _estimate_rows(results):
        lines.append(f"| {label} | {_agreement_cells(r.summary['volume_agreement'][name])} |")
    lines.append("")
    subtypes = [
        n for n in SUBTYPES if any(n in (r.summary.get("per_subtype") or {}) for r in results)
    ]
    if not subtypes:
        return lines
    lines += [
        "Volume agreement per subtype, MAE (mL) / Lin's CCC (volumes with a bleed), a volume "
        "counting for each subtype it shows:",
        "",
        "| Estimate | " + " | ".join(subtypes) + " |",
        "|---|" + "---|" * len(subtypes),
    ]
    for label, name, r in _estimate_rows(results):
        table = r.summary.get("per_subtype") or {}
        cells = []
        for subtype in subtypes:
            stats = table[subtype]["volume_agreement"][name] if subtype in table else {}
            cells.append(
                f"{_fmt(stats.get('mae_ml'), 2)} / {_fmt(stats.get('ccc'))} ({stats.get('n', 0)})"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


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
    """An external set's section: its facts, then the whole-volume section's body."""
    lines = f"Data: {source_facts_text(result.facts)}.\n\n"
    return lines + volumes_markdown(result.volumes, result.facts.get("name"))
