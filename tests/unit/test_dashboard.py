"""The dashboard view names only keys the runs logged: each key it names, left out of what the
runs logged, is refused by name when the view is built, or its panel left out and said so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ichseg.dashboard.publish import spec
from ichseg.dashboard.runs import GroupRuns
from ichseg.dashboard.view import build_view
from ichseg.errors import IchsegError
from ichseg.metrics import PROTOCOLS
from ichseg.sweeps.wandb_offline import OfflineRun
from tests.helpers.view_spec import panels_table, spec_keys

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sweeps.md"

REPORT_TABLES = ("table1", "selection", "paired_tests", "test_slices")
REPORT_FIGURES = ("figures/loss_curves", "figures/val_dice_by_epoch")
# Left out, and said so, when no run logged them: a job logs overlays only with overlay_count >
# 0, and the report run's tables and figures are what that report had.
OPTIONAL = {"val_overlays", *REPORT_TABLES, *REPORT_FIGURES}


def everything_logged() -> dict[str, set[str]]:
    """What the jobs of a sweep and its report run log, from the metric registry."""
    history = {"epoch", "checkpoint/epoch", "train/loss", "val/loss", "val_overlays"}
    history.add("checkpoint_records")
    for protocol in PROTOCOLS.values():
        for stage in protocol.stages:
            if stage in ("train", "val"):
                history |= {f"{stage}/{k}" for k in protocol.keys}
                history |= {f"checkpoint/{stage}_{k}" for k in protocol.keys}
    history |= {*REPORT_TABLES, *REPORT_FIGURES}
    return {"history": history, "summary": set(history), "config": {"model", "model.name", "fold"}}


def group_runs(keys: dict[str, set[str]], recorded: set[str] = frozenset()) -> GroupRuns:
    """The runs of group g: two jobs and a report run whose row holds the report's logged
    tables and figures."""
    row: dict = {k: {"_type": "table-file"} for k in REPORT_TABLES if k in keys["history"]}
    row |= {k: {"_type": "image-file"} for k in REPORT_FIGURES if k in keys["history"]}
    report = OfflineRun(path=("report",), job_type="report", rows=[row])
    jobs = [OfflineRun(path=(f"job{i}",), job_type="train") for i in range(2)]
    return GroupRuns(
        group="g",
        project="ichseg",
        entity="",
        jobs=jobs,
        report=report if row else None,
        history=frozenset(keys["history"]),
        summary=frozenset(keys["summary"] | keys["history"]),
        config=frozenset(keys["config"]),
        recorded=frozenset(recorded),
        skipped=[],
    )


def named(runs: GroupRuns) -> tuple[set[tuple[str, str]], list[str]]:
    view, notes = build_view(runs, "me", "ichseg")
    return spec_keys(spec(view, {})), notes


def test_the_full_view_names_every_protocol_and_only_logged_keys():
    keys = everything_logged()
    found, notes = named(group_runs(keys))
    assert notes == []
    assert all(key in keys[kind] for kind, key in found)
    for protocol in PROTOCOLS.values():
        if "val" in protocol.stages:
            assert {("history", f"checkpoint/val_{k}") for k in protocol.keys} <= found
    assert ("summary", "table1") in found and ("history", "val_overlays") in found


def test_each_key_the_view_names_is_refused_by_name_when_no_run_logged_it():
    keys = everything_logged()
    found, _ = named(group_runs(keys))
    assert len(found) > 40
    for kind, key in sorted(found):
        less = {k: v - {key} for k, v in keys.items()}  # a run's summary holds its history keys
        if key in OPTIONAL:
            # The report's keys go with the report run; overlays with overlay_count.
            got, notes = named(group_runs(less))
            assert (kind, key) not in got and (key == "val_overlays") <= bool(notes), key
            continue
        with pytest.raises(IchsegError, match=f"key '{re.escape(key)}'"):
            named(group_runs(less))


def test_a_protocol_every_job_recorded_undefined_is_left_out_and_said_so():
    keys = everything_logged()
    onebatch = {f"checkpoint/val_{k}" for k in PROTOCOLS["onebatch"].keys}
    keys["history"] -= onebatch | {f"val/{k}" for k in PROTOCOLS["onebatch"].keys}
    keys["summary"] = set(keys["history"])
    found, notes = named(group_runs(keys, recorded=onebatch))
    assert not any("onebatch" in key for _, key in found)
    assert any(note.startswith("no onebatch section") for note in notes)
    # Neither logged nor recorded: not a protocol the runs know, so the view is refused.
    with pytest.raises(IchsegError, match="checkpoint/val_dice_onebatch"):
        named(group_runs(keys))


def test_docs_list_the_panels_the_view_holds():
    view, _ = build_view(group_runs(everything_logged()), "me", "ichseg")
    assert panels_table(spec(view, {})) in DOCS.read_text()
