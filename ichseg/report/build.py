"""Assemble `<sweep>/report/`: report.md, Table 1 (csv, LaTeX), summary.json and figures.

The folder is written into a temporary sibling and renamed into place, so a reader sees the old
report or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ichseg.atomic import atomic_path, check_replaceable
from ichseg.errors import IchsegError
from ichseg.inference.evaluate import dataset_label
from ichseg.metrics import COLLAPSED
from ichseg.models.network import FLOPS_SIZE
from ichseg.report import figures
from ichseg.report.compare import PairedComparison, comparison_markdown
from ichseg.report.compute import HeldoutResults, SweepResults
from ichseg.report.heldout_slices import SliceResult, slices_markdown
from ichseg.report.heldout_volumes import (
    ExternalResult,
    VolumeResult,
    external_markdown,
    source_facts_text,
    volumes_markdown,
)
from ichseg.report.render import detection_markdown, table1_csv, table1_latex, table1_markdown
from ichseg.report.selection import (
    NOT_LEARNING_RULE,
    Selection,
    selection_markdown,
    warning_lines,
)
from ichseg.report.table import (
    DETECTION_DESCRIPTION,
    STD_MEANING,
    TABLE1_COLUMNS,
    TRAIN_MEANING,
    ArchInfo,
    TableRow,
    detection_rows,
    undefined_values,
)
from ichseg.sweeps.local import read_cache_meta
from ichseg.sweeps.model import Job, Sweep

# Published validation numbers (the D-Unet paper; Hssayeni et al. 2020, doi:10.3390/data5010014):
# source, protocol, split, architecture, IoU, Dice, test.
# A folder holding all three is a report ichseg wrote, which a new report may replace.
REPORT_FILES = ("report.md", "summary.json", "table1.csv")
PUBLISHED = (
    (
        "D-Unet paper, Table 1",
        "paper",
        "slice, 10 folds",
        "U-Net 600 ep.",
        "0.65 (0.04)",
        "0.79 (0.03)",
        "—",
    ),
    (
        "D-Unet paper, Table 1",
        "paper",
        "slice, 10 folds",
        "D-Unet 800 ep.",
        "0.72 (0.05)",
        "0.84 (0.03)",
        "0.86 / 0.89",
    ),
    ("Same work, later version", "paper", "slice, 3 × 10 folds", "U-Net", "0.59", "0.72", "—"),
    (
        "Same work, later version",
        "paper",
        "slice, 3 × 10 folds",
        "D-Unet",
        "0.68 (0.08)",
        "0.81 (0.06)",
        "—",
    ),
    (
        "Dataset paper (Hssayeni et al. 2020)",
        "lesion",
        "patient, 5 folds",
        "U-Net",
        "—",
        "0.31",
        "—",
    ),
)
PUBLISHED_NOTE = (
    "Compare our paper-protocol table with the D-Unet paper, and our lesion protocol on a "
    "`data.split=patient` sweep with the dataset paper: the gap between the published numbers "
    "is mostly the evaluation protocol and the split."
)


def report_dir(sweep: Sweep, out_dir: str | Path | None = None) -> Path:
    """The report folder (default `<sweep>/report/`), refused unless a report may be written
    there: checked before the held-out scoring, not only before the rename."""
    if out_dir is None and not sweep.root.is_dir():
        raise IchsegError(f"{sweep.root}: not a folder; give out_dir for the report")
    out = Path(out_dir) if out_dir is not None else sweep.root / "report"
    check_replaceable(out, REPORT_FILES)
    return out


def build_report(
    results: SweepResults, out_dir: str | Path | None = None, heldout: HeldoutResults | None = None
) -> Path:
    """Write the report of `results` into `report_dir(results.sweep, out_dir)`; return its path.

    `heldout` is the test split's scores, or None when it was not scored.
    """
    sweep, rows, selections = results.sweep, results.rows, results.selections
    out = report_dir(sweep, out_dir)
    with atomic_path(out, is_dir=True, owned_by=REPORT_FILES) as tmp:
        all_rows = [r for name in TABLE1_COLUMNS for r in rows[name]]
        (tmp / "table1.csv").write_text(table1_csv(all_rows), encoding="utf-8")
        (tmp / "table1.tex").write_text(_latex(rows, results.archs, selections), encoding="utf-8")
        pictures = {}
        if figures.loss_curves(sweep, tmp / "loss_curves.png"):
            pictures["loss_curves.png"] = "Training and validation Dice loss per epoch"
        by_epoch = {name: rows[name] for name in ("paper", "lesion")}
        if figures.val_dice_by_epoch(by_epoch, selections, tmp / "val_dice_by_epoch.png"):
            pictures["val_dice_by_epoch.png"] = "Validation Dice per checkpoint epoch"
        slices = heldout.slices if heldout is not None else []
        for i, result in enumerate(slices):
            name = f"test_overlays_{result.model}_{i}.png"
            if figures.test_overlays(result, tmp / name):
                pictures[name] = f"Test slices, {result.name}, {result.scoring}"
        summary = _summary(sweep, selections, results.comparisons, results.protocol)
        summary["architectures"] = {
            m: {"name": sweep.names[m], **dataclasses.asdict(info)}
            for m, info in results.archs.items()
            if info is not None
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        volumes = heldout.volumes if heldout is not None else []
        external = heldout.external if heldout is not None else []
        for volume in [*volumes, *(v for e in external for v in e.volumes)]:
            shutil.copytree(volume.folder, tmp / volume.folder.name)
        text = _markdown(results, slices, pictures, volumes, external)
        (tmp / "report.md").write_text(text, encoding="utf-8")
    return out


def _latex(
    rows: dict[str, list[TableRow]],
    archs: dict[str, ArchInfo | None],
    selections: dict[str, Selection],
) -> str:
    """table1.tex: the paper-style table first, then the same table under the other protocols."""
    parts = [
        "% Needs \\usepackage{booktabs}. Bold: selected checkpoint per architecture; "
        "underlined: best overall.\n"
    ]
    for name, p in TABLE1_COLUMNS.items():
        caption = " ".join(
            [
                f"Performance per architecture and checkpoint epoch, {p.description} "
                f"{TRAIN_MEANING} {STD_MEANING}",
                *(f"Warning: {w}" for w in selections[name].warnings()),
            ]
        )
        parts.append(
            table1_latex(
                rows[name],
                archs,
                selections[name].epochs(),
                selections[name].best_key(),
                caption,
                f"tab:table1-{name}",
            )
        )
    return "\n".join(parts)


def _checkpoints(sweep: Sweep, model: str, epoch: int) -> dict[str, str]:
    """Fold -> checkpoint path of the records at (model, epoch), where the record names one."""
    out = {}
    for job in sweep.jobs_of(model):
        record = job.record(epoch)
        if record is not None and record.get("checkpoint") and job.dir is not None:
            out[str(job.fold)] = str(job.dir / record["checkpoint"])
    return out


def _finite(value: float) -> float | None:
    """JSON has no NaN."""
    return value if math.isfinite(value) else None


def _summary(
    sweep: Sweep,
    selections: dict[str, Selection],
    comparisons: dict[str, list[PairedComparison]],
    main_protocol: str,
) -> dict[str, Any]:
    """Machine-readable selection, comparison and completeness (for test evaluation, predict)."""
    return {
        "sweep": str(sweep.root),
        "protocol": main_protocol,
        "non_learner_rule": NOT_LEARNING_RULE,
        "selection": {
            name: {
                "best": sel.best,
                "no_usable_epoch": {
                    m: f"a fold's network had collapsed at every epoch {list(epochs)}"
                    for m, epochs in sel.all_collapsed.items()
                },
                "models": {
                    m: {
                        "epoch": c.epoch,
                        "val_iou_mean": _finite(c.row.val_iou.mean),
                        "val_iou_std": _finite(c.row.val_iou.std),
                        "val_dice_mean": _finite(c.row.val_dice.mean),
                        "val_dice_std": _finite(c.row.val_dice.std),
                        "n_folds": c.row.n_folds,
                        "non_learner": not c.learning,
                        "non_learner_reason": c.not_learning or None,
                        "checkpoints": _checkpoints(sweep, m, c.epoch),
                    }
                    for m, c in sel.choices.items()
                },
            }
            for name, sel in selections.items()
        },
        "comparisons": {
            name: [
                {
                    "metric": c.metric,
                    "a": c.model_a,
                    "epoch_a": c.epoch_a,
                    "b": c.model_b,
                    "epoch_b": c.epoch_b,
                    "folds": list(c.folds),
                    "mean_diff_b_minus_a": _finite(c.mean_diff),
                    "t_ci": [_finite(x) for x in c.t_ci],
                    "bootstrap_ci": [_finite(x) for x in c.bootstrap_ci],
                    "wilcoxon_statistic": _finite(c.statistic),
                    "p_value": _finite(c.p_value),
                    "method": c.method,
                    "significant": c.significant,
                    "verdict": c.verdict,
                }
                for c in cs
            ]
            for name, cs in comparisons.items()
        },
        "completeness": {
            "expected_folds": sweep.expected_folds,
            "missing_jobs": [f"{m}-fold{f}" for m, f in sweep.missing_jobs],
            "unfinished_jobs": {j.name: j.status for j in sweep.unfinished},
            "missing_records": [
                {"model": m, "fold": f, "epoch": e} for m, f, e in sweep.missing_records
            ],
        },
    }


def _distinct(sweep: Sweep, key: str) -> list[str]:
    """Distinct job.json values of `key` across jobs, as text (dicts as `k=v` lists)."""
    values = []
    for job in sweep.jobs:
        value = job.state.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in sorted(value.items()))
        values.append(str(value))
    return list(dict.fromkeys(values))


def _config_values(sweep: Sweep, key: str) -> str:
    """Distinct values of a config key across jobs, joined; 'not set' when no job has it."""
    values = [repr(j.get(key, None)) for j in sweep.jobs if j.config]
    values = [v for v in dict.fromkeys(values) if v != "None"]
    return " / ".join(v.strip("'") for v in values) or "not set"


def _flat(value: Any) -> str:
    """Nested counts as `key value, group: (key value, ...)` text."""
    if isinstance(value, dict):
        return ", ".join(
            f"{k}: ({_flat(v)})" if isinstance(v, dict) else f"{k} {v}" for k, v in value.items()
        )
    return str(value)


def _when(stamp: float | str) -> str:
    """A job.json time (Unix seconds, or text as written) in UTC."""
    if isinstance(stamp, (int, float)):
        return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return str(stamp)


def _architecture_text(info: ArchInfo) -> str:
    """One model's network for the provenance section: what it is, its parameters and FLOPs."""
    if info.parameters is None:
        counted = f"parameters and FLOPs not counted ({info.uncounted})"
    else:
        counted = (
            f"{info.parameters:,} parameters, {info.flops_text} GFLOPs per {FLOPS_SIZE}² slice "
            "(forward pass, counted on the network built from the job's config)"
        )
    return (
        f"`{info.network}`, filters {info.filters}, batch norm {info.batch_norm}, dropout "
        f"{info.dropout}; {counted}"
    )


def _provenance(
    sweep: Sweep, archs: dict[str, ArchInfo | None], external: list[ExternalResult]
) -> list[str]:
    """The provenance section: data, split, key config, code version, hardware."""
    lines = ["## Provenance", ""]
    metas = [(j, read_cache_meta(j)) for j in sweep.jobs]
    caches = list(dict.fromkeys(str(j.state.get("cache_dir")) for j, _ in metas))
    meta = next((m for _, m in metas if m), None)
    if meta is None:
        lines.append(
            "- Data: unknown — no job's cache_dir meta.json could be read "
            f"(cache_dir: {', '.join(caches)})."
        )
    else:
        facts = meta.get("source_facts") or {"name": meta.get("source", "unknown")}
        lines.append(
            f"- Training data: {source_facts_text(facts)}; labels sha256 "
            f"`{meta.get('labels_sha256')}`."
        )
        if meta.get("counts"):
            lines.append(f"- Prepared set: {_flat(meta['counts'])}.")
    for result in external:
        lines.append(f"- External validation data: {source_facts_text(result.facts)}.")
    if len(caches) > 1:
        lines.append(f"- **Jobs used different prepared caches**: {', '.join(caches)}.")
    else:
        lines.append(f"- Prepared cache: `{caches[0]}`.")
    lines.append(
        f"- Split: `data.split={_config_values(sweep, 'data.split')}` "
        f"(slice = the paper's per-slice split, one patient's slices on both sides; patient = "
        f"no patient in both), data.n_folds {_config_values(sweep, 'data.n_folds')}, "
        f"data.seed {_config_values(sweep, 'data.seed')}."
    )
    lines.append(
        f"- Training: image size {_config_values(sweep, 'data.size')}, batch size "
        f"{_config_values(sweep, 'data.batch_size')} (evaluation batches: "
        f"{_config_values(sweep, 'data.eval_batch_size')}, 'not set' = the batch size; the "
        f"paper protocol averages over them), max epochs "
        f"{_config_values(sweep, 'trainer.max_epochs')}, checkpoint every "
        f"{_config_values(sweep, 'checkpoint_every')} epochs, seed "
        f"{_config_values(sweep, 'seed')}; experiment "
        f"`{_config_values(sweep, 'experiment_name')}`."
    )
    for model, info in archs.items():
        if info is not None:
            lines.append(f"- {sweep.names[model]}: {_architecture_text(info)}.")
            if info.conflicts:
                lines.append(
                    f"  - **Config differs between {sweep.names[model]} folds**: "
                    + ", ".join(info.conflicts)
                )
    for model in sweep.models:
        imported = [j for j in sweep.jobs_of(model) if j.imported]
        if imported:
            epochs = sorted({int(j.get("trainer.max_epochs")) for j in imported})
            settings = {
                k: v
                for k, v in (imported[0].state.get("imported_from") or {}).items()
                if k in ("trainer", "plans", "configuration")
            }
            described = _flat(settings) or "settings not recorded"
            lines.append(
                f"- {sweep.names[model]}: trained by {imported[0].trained_by} on the same "
                f"exported slices and folds and imported ({described}), "
                f"{', '.join(map(str, epochs))} epochs; one checkpoint, its own "
                "final one. Its validation and test probabilities are scored by ichseg under "
                "every protocol, in the same slices and evaluation batches; it records no "
                "training-batch metrics (Train NA) and is not scored on whole volumes."
            )
    for key, label in (
        ("code_version", "Code version"),
        ("hardware", "Hardware"),
        ("packages", "Packages"),
    ):
        values = _distinct(sweep, key)
        lines.append(f"- {label}: " + ("; ".join(f"`{v}`" for v in values) or "not recorded") + ".")
    started = [j.state["started"] for j in sweep.jobs if j.state.get("started")]
    finished = [j.state["finished"] for j in sweep.jobs if j.state.get("finished")]
    if started:
        last = _when(max(finished)) if finished else "not finished"
        lines.append(f"- Jobs ran from {_when(min(started))} to {last}.")
    return [*lines, ""]


def _status(job: Job) -> str:
    """A job's status for the reader: a `running` job may also have been killed."""
    if job.status == "running":
        return "running, or interrupted"
    if job.status == "failed" and job.state.get("error"):
        return f"failed: {str(job.state['error']).splitlines()[0][:120]}"
    return job.status


def _completeness(sweep: Sweep) -> list[str]:
    """The completeness section: which jobs and records are missing or unfinished."""
    n_expected = len(sweep.models) * len(sweep.expected_folds)
    lines = [
        "## Completeness",
        "",
        f"Expected {n_expected} jobs: models {', '.join(sweep.models)} × folds "
        f"{', '.join(map(str, sweep.expected_folds))} (from {sweep.folds_from}); expected "
        "checkpoint epochs: every checkpoint_every epochs up to trainer.max_epochs, plus the last. "
        "Means are over the folds present; n_folds says how many.",
        "",
    ]
    done = sum(1 for j in sweep.jobs if j.status == "done")
    lines.append(f"- Jobs found: {len(sweep.jobs)} ({done} done).")
    missing = ", ".join(f"{m}-fold{f}" for m, f in sweep.missing_jobs)
    lines.append(f"- Missing jobs (never started, or their folder is gone): {missing or 'none'}.")
    unfinished = ", ".join(f"{j.name} ({_status(j)})" for j in sweep.unfinished)
    lines.append(f"- Unfinished jobs (their records so far are included): {unfinished or 'none'}.")
    by_job: dict[tuple[str, int], list[int]] = {}
    for m, f, e in sweep.missing_records:
        by_job.setdefault((m, f), []).append(e)
    if by_job:
        lines.append("- Missing checkpoint records:")
        for (m, f), epochs in by_job.items():
            tag = " (job missing)" if (m, f) in sweep.missing_jobs else ""
            lines.append(f"  - {m}-fold{f}{tag}: epochs {', '.join(map(str, epochs))}")
    else:
        lines.append("- Missing checkpoint records: none.")
    lines += [f"- {note}" for note in sweep.notes]
    return [*lines, ""]


def _markdown(
    computed: SweepResults,
    results: list[SliceResult],
    pictures: dict[str, str],
    patients: list[VolumeResult],
    external: list[ExternalResult],
) -> str:
    """report.md."""
    sweep, rows, archs = computed.sweep, computed.rows, computed.archs
    selections, comparisons = computed.selections, computed.comparisons
    main = TABLE1_COLUMNS[computed.protocol]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# ichseg report: `{sweep.root.name}`",
        "",
        f"Sweep `{sweep.root}`, built {stamp}. Selection and headline comparison use the "
        f"**{main.name}** protocol.",
        "",
        *_provenance(sweep, archs, external),
        *_completeness(sweep),
        f"## Table 1 ({main.name} protocol)",
        "",
        f"Protocol — {main.description}",
        "",
        f"{TRAIN_MEANING} {STD_MEANING} Bold: selected checkpoint per architecture; †: best "
        f"overall; (collapsed: fold k): that fold's network had collapsed ({COLLAPSED}: "
        "lesion Dice 0), so the epoch is never selected. Architecture columns: what each "
        "network says of itself, completed by its config's model.architecture (NA: neither "
        f"says); Params and GFLOPs (forward pass per {FLOPS_SIZE}² slice) are counted on the "
        "network built from the job's config.",
        "",
        *warning_lines(selections[main.name]),
        table1_markdown(
            rows[main.name], archs, selections[main.name].epochs(), selections[main.name].best_key()
        ),
        "## Selection",
        "",
        selection_markdown(selections[main.name]),
        "## Paired comparison",
        "",
        comparison_markdown(comparisons[main.name], selections[main.name]),
        "## Test set",
        "",
    ]
    if results:
        lines += [
            "Selected checkpoints scored on the held-out test split under every protocol, "
            "overall and per hemorrhage subtype (a slice counts for each subtype it carries; "
            "NA where a metric is undefined on that subset, e.g. specificity without negatives). "
            "Scoring: *ensemble* = the fold models' probabilities at the selected epoch averaged, "
            "then thresholded; *best fold* = the single fold model with the highest validation "
            "score at that epoch (the paper tested one selected model). Both are reported. "
            "The `perimage` columns are the authors' own test scoring (Keras `evaluate` with "
            "batch size 1: each slice's soft Dice/IoU with smooth 100, averaged over slices), "
            "where every empty slice predicted near-empty scores about 1: read them beside "
            "the lesion and pooled columns to see where the paper's test 0.86 / 0.89 come from.",
            "",
            *warning_lines(selections[main.name], {r.model for r in results}),
            slices_markdown(results),
        ]
    else:
        lines += ["Not scored: no test evaluation was run for this report.", ""]
    if patients:
        lines += [
            "## Held-out patients, whole volumes",
            "",
            *warning_lines(selections[main.name], {r.model for r in patients}),
            volumes_markdown(patients),
        ]
    for result in external:
        title = dataset_label(result.facts)
        lines += [
            f"## External validation: {title}",
            "",
            *warning_lines(selections[main.name], {r.model for r in result.volumes}),
            external_markdown(result),
        ]
    for name, p in TABLE1_COLUMNS.items():
        if name == main.name:
            continue
        sel = selections[name]
        lines += [
            f"## Table 1 under the {name} protocol",
            "",
            f"Protocol — {p.description} {STD_MEANING}",
            "",
            *warning_lines(sel),
            table1_markdown(rows[name], archs, sel.epochs(), sel.best_key()),
            selection_markdown(sel),
            *(f"- {c.metric_label}: {c.verdict}" for c in comparisons[name]),
            "",
        ]
    lines += [
        "## Detection (validation)",
        "",
        f"Protocol — {DETECTION_DESCRIPTION} {STD_MEANING}",
        "",
        detection_markdown(detection_rows(sweep)),
    ]
    undefined = [u for name in TABLE1_COLUMNS for u in undefined_values(sweep, name)]
    if undefined:
        lines += [
            "Undefined metric values (null in the records, left out of the means): "
            + "; ".join(undefined)
            + ".",
            "",
        ]
    lines += ["## Figures", ""]
    lines += [f"![{caption}]({name})" for name, caption in pictures.items()] or ["None drawn."]
    lines += [
        "",
        "## Published numbers to compare against",
        "",
        "| Source | Protocol | Split | Architecture | Val IoU (std) | Val Dice (std) "
        "| Test IoU / Dice |",
        "|---|---|---|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in PUBLISHED),
        "",
        PUBLISHED_NOTE,
        "",
    ]
    return "\n".join(lines)
