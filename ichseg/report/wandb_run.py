"""The report as a W&B run: one run of job type `report` in the sweep's group.

When the sweep's jobs logged to W&B (their run files are in the sweep folder, or the report was
read from the W&B API), `ichseg report` logs what it wrote into one more run of their project and
group, beside the jobs' runs, which it never touches: Table 1 as a `wandb.Table` with the columns
and rows of `table1.csv`, the selection and the paired tests (`summary.json`), the test-set,
held-out and external scores, and the report's figures as images. The run is offline unless
WANDB_MODE says otherwise (upload it with `wandb sync`), its files in `<sweep>/wandb/`, which a
new report never replaces: each report adds a run. A failure to log it leaves the written report
as it is and says so in one line.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichseg.errors import first_line
from ichseg.sweeps.wandb_api import REPORT_JOB_TYPE
from ichseg.sweeps.wandb_offline import sweep_runs

if TYPE_CHECKING:  # the report's modules import the training stack; the dashboard needs none
    from ichseg.report.compute import HeldoutResults, SweepResults
    from ichseg.report.heldout_volumes import VolumeResult

# Keys of the report run's tables; its figures are logged under FIGURES_PREFIX.
TABLE1_KEY = "table1"
SELECTION_KEY = "selection"
PAIRED_TESTS_KEY = "paired_tests"
TEST_SLICES_KEY = "test_slices"
HELDOUT_VOLUMES_KEY = "heldout_volumes"
EXTERNAL_VOLUMES_KEY = "external_volumes"
PATIENTS_PREFIX = "patients/"
FIGURES_PREFIX = "figures/"


@dataclass(frozen=True)
class ReportTarget:
    """Where the report run goes: the jobs' W&B project, entity and group, and the folder whose
    `wandb/` holds its files."""

    project: str
    entity: str | None
    group: str
    dir: Path


def report_target(
    results: SweepResults, out: Path, project: str | None = None, group: str | None = None
) -> ReportTarget | None:
    """The jobs' project and group: `project` ("entity/project") and `group` when the report was
    read from the W&B API, else those most of the sweep folder's job runs logged to; None when
    the sweep logged nothing to W&B."""
    if project and group:
        entity, _, name = project.partition("/")
        return ReportTarget(name, entity, group, out.parent)
    root = results.sweep.root
    if not root.is_dir():
        return None
    jobs = [run for run in sweep_runs(root)[0] if run.job_type != REPORT_JOB_TYPE]
    if not jobs:
        return None
    (project, entity, group), _ = Counter(
        (run.project, run.entity, run.group) for run in jobs
    ).most_common(1)[0]
    return ReportTarget(project, entity or None, group, root)


def log_report_run(
    results: SweepResults,
    heldout: HeldoutResults | None,
    out: Path,
    project: str | None = None,
    group: str | None = None,
) -> None:
    """Log the report written in `out` as a run of the jobs' W&B group (see the module's
    docstring); say in one line where it went, or, on stderr, why it was not logged."""
    mode = os.environ.get("WANDB_MODE") or "offline"
    if mode == "disabled":
        return
    try:
        target = report_target(results, out, project, group)
        if target is None:
            return
        where = _log(results, heldout, out, target, mode)
    except Exception as exc:  # the report is written; W&B failing must not lose it
        print(
            f"ichseg report: warning: W&B report run not logged ({first_line(exc)}); the "
            f"report in {out} is complete",
            file=sys.stderr,
        )
        return
    print(where)


def _log(
    results: SweepResults,
    heldout: HeldoutResults | None,
    out: Path,
    target: ReportTarget,
    mode: str,
) -> str:
    """Log the run; the line that says where it went."""
    import wandb

    from ichseg.inference.evaluate import dataset_label

    sweep = results.sweep
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    logged: dict[str, Any] = {TABLE1_KEY: _csv_table(out / "table1.csv")}
    logged[SELECTION_KEY] = _table(_selection_rows(summary), ("protocol", "model"))
    logged[PAIRED_TESTS_KEY] = _table(_comparison_rows(summary), ("protocol",))
    if heldout is not None and heldout.slices:
        logged[TEST_SLICES_KEY] = _table(_slice_rows(heldout))
    volumes = heldout.volumes if heldout is not None else []
    if volumes:
        logged[HELDOUT_VOLUMES_KEY] = _table([_volume_row(v) for v in volumes])
    external = heldout.external if heldout is not None else []
    if external:
        rows = [
            {"dataset": dataset_label(e.facts), **_volume_row(v)}
            for e in external
            for v in e.volumes
        ]
        logged[EXTERNAL_VOLUMES_KEY] = _table(rows)
    for volume in [*volumes, *(v for e in external for v in e.volumes)]:
        patients = out / volume.folder.name / "patients.csv"
        if patients.is_file():
            logged[PATIENTS_PREFIX + volume.folder.name] = _csv_table(patients)
    for picture in sorted([*out.glob("*.png"), *out.glob("*/*.png")]):
        key = FIGURES_PREFIX + picture.relative_to(out).with_suffix("").as_posix()
        logged[key] = wandb.Image(str(picture))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    config = {
        "protocol": results.protocol,
        "sweep": str(sweep.root),
        "report": str(out),
        "models": list(sweep.models),
        "folds": list(sweep.expected_folds),
        "jobs": len(sweep.jobs),
    }
    with wandb.init(
        project=target.project,
        entity=target.entity,
        group=target.group,
        job_type=REPORT_JOB_TYPE,
        name=f"report-{stamp}",
        tags=[REPORT_JOB_TYPE],
        dir=str(target.dir),
        mode=mode,
        config=config,
        settings=wandb.Settings(silent=True, console="off"),
    ) as run:
        run.log(logged)
        run.summary.update(_selected(summary))
        files = Path(run.dir).parent
        url = run.url if mode == "online" else None
        name = run.name
    if url:
        return f"W&B report run {name} in group {target.group}: {url}"
    return (
        f"W&B report run {name} logged offline in group {target.group}: {files} "
        f"(upload with `wandb sync {files}`)"
    )


def _cell(value: Any) -> Any:
    """A table cell: numbers, text, booleans and None as they are; lists and dicts as JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def _table(rows: list[dict[str, Any]], first: tuple[str, ...] = ()) -> Any:
    """A `wandb.Table` of dict rows: the columns `first`, then the others in the order they
    first appear (an empty table still has `first`)."""
    import wandb

    columns = list(dict.fromkeys([*first, *(key for row in rows for key in row)]))
    data = [[_cell(row.get(column)) for column in columns] for row in rows]
    return wandb.Table(columns=columns, data=data, allow_mixed_types=True)


def _number(text: str) -> int | float:
    """A CSV cell as the number it writes; ValueError when it is not one."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _csv_table(path: Path) -> Any:
    """A CSV file as a `wandb.Table` with its columns and rows: a column whose every non-empty
    cell is a number holds numbers, other columns the text; an empty cell is None."""
    import wandb

    with open(path, newline="", encoding="utf-8") as fh:
        columns, *rows = list(csv.reader(fh))
    numeric = []
    for i in range(len(columns)):
        try:
            for row in rows:
                if row[i]:
                    _number(row[i])
        except ValueError:
            numeric.append(False)
        else:
            numeric.append(True)
    data = [
        [(_number(c) if numeric[i] else c) if c else None for i, c in enumerate(row)]
        for row in rows
    ]
    return wandb.Table(columns=columns, data=data, allow_mixed_types=True)


def _selection_rows(summary: dict) -> list[dict[str, Any]]:
    """summary.json's selection: one row per protocol and architecture."""
    rows = []
    for protocol, selection in summary["selection"].items():
        for model, choice in selection["models"].items():
            row = {"protocol": protocol, "model": model, "best_overall": selection["best"] == model}
            rows.append({**row, **choice})
    return rows


def _comparison_rows(summary: dict) -> list[dict[str, Any]]:
    """summary.json's paired tests: one row per protocol and comparison."""
    return [
        {"protocol": protocol, **comparison}
        for protocol, comparisons in summary["comparisons"].items()
        for comparison in comparisons
    ]


def _slice_rows(heldout: HeldoutResults) -> list[dict[str, Any]]:
    """The test-set scores as the report's test table has them: overall and per subtype."""
    from ichseg.report.heldout_slices import METRIC_COLUMNS

    rows = []
    for r in heldout.slices:
        subsets = [("all", r.n_slices, r.overall)]
        subsets += [(s, r.subtype_counts.get(s, 0), m) for s, m in r.by_subtype.items()]
        for subset, count, metrics in subsets:
            head = {"architecture": r.name, "model": r.model, "epoch": r.epoch}
            head |= {"scoring": r.scoring, "subset": subset, "slices": count}
            rows.append({**head, **{k: metrics.get(k) for k in METRIC_COLUMNS}})
    return rows


def _volume_row(volume: VolumeResult) -> dict[str, Any]:
    """One architecture's whole-volume scores: its summary's numbers and text."""
    head = {"architecture": volume.name, "model": volume.model, "epoch": volume.epoch}
    head["folds"] = " ".join(map(str, volume.folds))
    scalars = {
        k: v
        for k, v in volume.summary.items()
        if v is None or isinstance(v, (bool, int, float, str))
    }
    return {**head, **scalars}


def _selected(summary: dict) -> dict[str, Any]:
    """The run's summary: the main protocol's best architecture and selected checkpoints."""
    selection = summary["selection"][summary["protocol"]]
    values: dict[str, Any] = {"protocol": summary["protocol"], "best": selection["best"]}
    for model, choice in selection["models"].items():
        for key in ("epoch", "val_iou_mean", "val_dice_mean"):
            values[f"selected/{model}/{key}"] = choice.get(key)
    return values
