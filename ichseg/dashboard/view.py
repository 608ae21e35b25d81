"""The W&B workspace view of a sweep's group, as `wandb_workspaces` objects.

Runs are filtered to the group and grouped by `model.name`, so a line is an architecture's mean
over its folds with a band of one standard deviation: Table 1's shape. Sections, in order:
- Table 1 (report run): the latest report run's tables (Table 1, selection, paired tests, test
  and held-out scores) and figures, when the group has a report run;
- one per metric protocol of `ichseg.metrics.PROTOCOLS` that validation records: what it
  averages, its two validation metrics per checkpoint epoch (mean ± std over folds), the first
  per fold, and its training value;
- training curves per epoch: the Dice loss and each shown protocol's Dice;
- validation overlays and the jobs' checkpoint records tables;
- models and folds: a parallel-coordinates plot over model, fold and each protocol's
  validation Dice at the last checkpoint.
Every key a panel names must be one the group's runs logged (`check_keys`); a protocol whose
metrics every job recorded as undefined (never a value: e.g. onebatch on folds smaller than a
batch) and overlays no job logged are left out and said so.
"""

from __future__ import annotations

import difflib
from typing import Any

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws

from ichseg.dashboard.runs import RECORDS_TABLE, GroupRuns
from ichseg.errors import IchsegError
from ichseg.metrics import PROTOCOLS, Protocol
from ichseg.report.wandb_run import PAIRED_TESTS_KEY, SELECTION_KEY, TABLE1_KEY

MODEL_KEY = "model.name"
FOLD_KEY = "fold"
CHECKPOINT_EPOCH = "checkpoint/epoch"
EPOCH = "epoch"
LOSSES = ("train/loss", "val/loss")
OVERLAYS = "val_overlays"
# The report run's tables in the order the report reads them; any others follow by name.
REPORT_TABLES = (TABLE1_KEY, SELECTION_KEY, PAIRED_TESTS_KEY)
# W&B's own x axis, logged by every run.
BUILT_IN_X = ("Step",)


def _label(key: str) -> str:
    """How a metric key reads in a title: `dice_paper` -> Dice, `sensitivity_detection` ->
    sensitivity."""
    name = key.split("_")[0]
    return {"dice": "Dice", "iou": "IoU"}.get(name, name)


def _grouped(title: str, x: str, y: list[str], **extra: Any) -> wr.LinePlot:
    """A line plot whose lines are each model's mean over its folds, ± one std unless `extra`
    says otherwise."""
    options = {"groupby_aggfunc": "mean", "groupby_rangefunc": "stddev", **extra}
    return wr.LinePlot(title=title, x=x, y=y, groupby=wr.Config(MODEL_KEY), **options)


def _val(protocol: Protocol) -> list[str]:
    """The checkpoint keys of the protocol's two validation metrics."""
    return [f"checkpoint/val_{key}" for key in protocol.keys]


def _shown_protocols(runs: GroupRuns) -> tuple[list[Protocol], list[str]]:
    """The protocols validation records, each but those every job recorded as undefined; and
    a note for each left out."""
    shown, notes = [], []
    for protocol in PROTOCOLS.values():
        if "val" not in protocol.stages:
            continue
        keys = _val(protocol)
        if not any(k in runs.history for k in keys) and all(k in runs.recorded for k in keys):
            notes.append(
                f"no {protocol.name} section: every job recorded {', '.join(keys)} as "
                "undefined (no value logged)"
            )
            continue
        shown.append(protocol)
    return shown, notes


def _protocol_section(protocol: Protocol, n_jobs: int, is_open: bool) -> ws.Section:
    """A protocol's checkpoint metrics against the checkpoint epoch."""
    first, second = protocol.keys
    panels: list[Any] = [wr.MarkdownPanel(markdown=f"**{protocol.name}**: {protocol.description}")]
    for key in (first, second):
        panels.append(
            _grouped(
                f"Validation {_label(key)} ({protocol.name}) per checkpoint, mean ± std over folds",
                CHECKPOINT_EPOCH,
                [f"checkpoint/val_{key}"],
            )
        )
    panels.append(
        _grouped(
            f"Validation {_label(first)} ({protocol.name}) per checkpoint, each fold",
            CHECKPOINT_EPOCH,
            [f"checkpoint/val_{first}"],
            groupby_rangefunc="samples",
            max_runs_to_show=n_jobs,
        )
    )
    if "train" in protocol.stages:
        panels.append(
            _grouped(
                f"Training {_label(first)} ({protocol.name}, running over the epoch's augmented "
                "batches), mean ± std over folds",
                CHECKPOINT_EPOCH,
                [f"checkpoint/train_{first}"],
            )
        )
    return ws.Section(name=f"Checkpoints: {protocol.name} protocol", panels=panels, is_open=is_open)


def _report_section(runs: GroupRuns) -> ws.Section:
    """The latest report run's tables and figures."""
    tables = runs.report_keys("table-file")
    ordered = [t for t in REPORT_TABLES if t in tables] + sorted(set(tables) - set(REPORT_TABLES))
    panels: list[Any] = [wr.WeavePanelSummaryTable(table_name=t) for t in ordered]
    figures = sorted(runs.report_keys("image-file"))
    if figures:
        panels.append(wr.MediaBrowser(title="Report figures", media_keys=figures))
    layout = ws.SectionLayoutSettings(columns=1, rows=2)
    return ws.Section(
        name="Table 1 (report run)", panels=panels, is_open=True, layout_settings=layout
    )


def _curves_section(shown: list[Protocol]) -> ws.Section:
    """Per-epoch training curves: the loss, and each shown Dice protocol's Dice."""
    panels = [_grouped("Dice loss per epoch, mean ± std over folds", EPOCH, list(LOSSES))]
    for protocol in shown:
        dice = protocol.keys[0]
        if _label(dice) != "Dice":
            continue
        y = [f"{split}/{dice}" for split in ("train", "val") if split in protocol.stages]
        panels.append(
            _grouped(f"Dice ({protocol.name}) per epoch, mean ± std over folds", EPOCH, y)
        )
    return ws.Section(name="Training curves (per epoch)", panels=panels)


def _records_section(runs: GroupRuns) -> tuple[ws.Section, list[str]]:
    """The validation overlays (when logged) and each job's checkpoint records table."""
    panels: list[Any] = []
    notes = []
    if OVERLAYS in runs.history:
        panels.append(
            wr.MediaBrowser(
                title="Validation overlays at each checkpoint (CT, truth, prediction)",
                media_keys=[OVERLAYS],
                gallery_axis="step",
            )
        )
    else:
        notes.append(f"no overlays panel: no job logged {OVERLAYS} (overlay_count=0)")
    panels.append(wr.WeavePanelSummaryTable(table_name=RECORDS_TABLE))
    layout = ws.SectionLayoutSettings(columns=1, rows=2)
    return ws.Section(
        name="Overlays and checkpoint records", panels=panels, layout_settings=layout
    ), notes


def _folds_section(shown: list[Protocol]) -> ws.Section:
    """Model, fold and each shown protocol's validation Dice at the last checkpoint."""
    columns = [wr.Config(MODEL_KEY), wr.Config(FOLD_KEY), wr.SummaryMetric(CHECKPOINT_EPOCH)]
    columns += [wr.SummaryMetric(_val(p)[0]) for p in shown if _label(p.keys[0]) == "Dice"]
    plot = wr.ParallelCoordinatesPlot(
        title="Each job at its last checkpoint: model, fold, validation Dice per protocol",
        columns=[wr.ParallelCoordinatesPlotColumn(metric=c) for c in columns],
    )
    layout = ws.SectionLayoutSettings(columns=1, rows=1)
    return ws.Section(name="Models and folds", panels=[plot], layout_settings=layout)


def build_view(runs: GroupRuns, entity: str, project: str) -> tuple[ws.Workspace, list[str]]:
    """The view of `runs`' group to save in W&B `entity`/`project`, and a note for each part
    left out; IchsegError when a panel names a key no run of the group logged."""
    shown, notes = _shown_protocols(runs)
    sections = []
    if runs.report is not None:
        sections.append(_report_section(runs))
    else:
        notes.append("no Table 1 section: no report run in the group yet (run `ichseg report`)")
    sections += [_protocol_section(p, len(runs.jobs), i == 0) for i, p in enumerate(shown)]
    sections.append(_curves_section(shown))
    records, left_out = _records_section(runs)
    sections += [records, _folds_section(shown)]
    n_runs = len(runs.jobs) + (runs.report is not None)
    view = ws.Workspace(
        entity=entity,
        project=project,
        name=f"ichseg {runs.group}",
        sections=sections,
        settings=ws.WorkspaceSettings(max_runs=max(10, n_runs)),
        runset_settings=ws.RunsetSettings(
            filters=[ws.Metric("Group") == runs.group], groupby=[ws.Config(MODEL_KEY)]
        ),
    )
    check_keys(view, runs)
    return view, notes + left_out


def _metric(metric: Any, default_kind: str) -> tuple[str, str] | None:
    """(kind, key) of a panel's metric: `config`, `summary` or `history`; None for W&B's own
    run attributes and axes."""
    if isinstance(metric, (wr.Config, ws.Config)):
        return "config", metric.name
    if isinstance(metric, wr.SummaryMetric):
        return "summary", metric.name
    run_attribute = isinstance(metric, wr.Metric) and default_kind == "summary"
    name = metric.name if isinstance(metric, wr.Metric) else str(metric)
    return None if run_attribute or name in BUILT_IN_X else (default_kind, name)


def panel_keys(panel: Any) -> list[tuple[str, str]]:
    """(kind, key) of every logged key `panel` names: history keys (line plots, media), summary
    keys (parallel coordinates, tables) and config keys."""
    if isinstance(panel, wr.LinePlot):
        found = [_metric(panel.x, "history"), *(_metric(y, "history") for y in panel.y)]
        if panel.groupby is not None:
            found.append(_metric(panel.groupby, "config"))
    elif isinstance(panel, wr.ParallelCoordinatesPlot):
        found = [_metric(c.metric, "summary") for c in panel.columns]
    elif isinstance(panel, wr.MediaBrowser):
        found = [("history", key) for key in panel.media_keys]
    elif isinstance(panel, wr.WeavePanelSummaryTable):
        found = [("summary", panel.table_name)]
    elif isinstance(panel, wr.MarkdownPanel):
        found = []
    else:
        raise TypeError(f"no key rule for a {type(panel).__name__} panel")
    return [key for key in found if key is not None]


def panel_title(panel: Any) -> str:
    """A panel's title, or what it shows when it has none."""
    if isinstance(panel, wr.WeavePanelSummaryTable):
        return f"table {panel.table_name}"
    if isinstance(panel, wr.MarkdownPanel):
        return "text"
    return str(panel.title)


def check_keys(view: ws.Workspace, runs: GroupRuns) -> None:
    """IchsegError, naming the panel and the key, unless every key a panel of `view` names (and
    the runset's grouping) is one the group's runs logged."""
    logged = {"history": runs.history, "summary": runs.summary, "config": runs.config}
    named = [("runset", "grouping", ("config", g.name)) for g in view.runset_settings.groupby]
    named += [
        (section.name, panel_title(panel), key)
        for section in view.sections
        for panel in section.panels
        for key in panel_keys(panel)
    ]
    for section, title, (kind, key) in named:
        if key in logged[kind]:
            continue
        close = difflib.get_close_matches(key, logged[kind], n=3)
        hint = f"; logged keys close to it: {', '.join(close)}" if close else ""
        raise IchsegError(
            f"section {section!r}, panel {title!r}: no run of group {runs.group!r} logged the "
            f"{kind} key {key!r} ({len(runs.jobs)} job runs read){hint}"
        )
