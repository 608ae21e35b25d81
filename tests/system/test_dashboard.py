"""`ichseg dashboard`: the W&B view of the tiny sweep's group, checked without a server: its
spec loads back into `wandb_workspaces` objects, every key a panel names is one the sweep's
offline runs logged (read here from the run files), and a key they did not log is refused."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import wandb_workspaces.workspaces as ws
from wandb_workspaces.workspaces import internal

from ichseg.cli import main
from ichseg.metrics import PROTOCOLS, Protocol
from ichseg.sweeps.wandb_offline import read_offline_run
from tests.helpers.runs import copy_or_link
from tests.helpers.view_spec import spec_keys
from tests.system.test_report_sources import ichseg_cli, offline_env

FAKE_KEY = "x" * 40


@pytest.fixture(scope="module")
def sweep(finished_sweep, tmp_path_factory) -> Path:
    """A copy of the tiny sweep with one report run logged by `ichseg report`."""
    copy = tmp_path_factory.mktemp("dashboard") / "tiny" / "s1"
    shutil.copytree(finished_sweep, copy, symlinks=True, copy_function=copy_or_link)
    shutil.rmtree(copy / "wandb", ignore_errors=True)
    env = offline_env(tmp_path_factory.mktemp("home"))
    result = ichseg_cli(["report", str(copy), "--no-test"], env)
    assert result.returncode == 0 and "W&B report run" in result.stdout, result.stderr[-3000:]
    return copy


def logged(sweep: Path) -> dict[str, set[str]]:
    """History, summary and dotted config keys of every run file in the sweep, read directly."""
    keys: dict[str, set[str]] = {"history": set(), "summary": set(), "config": set()}

    def dotted(config: dict, prefix: str = "") -> None:
        for key, value in config.items():
            keys["config"].add(prefix + key)
            if isinstance(value, dict):
                dotted(value, f"{prefix}{key}.")

    for path in [*sweep.glob("*/wandb/offline-run-*/*.wandb"), *sweep.glob("wandb/*/*.wandb")]:
        run = read_offline_run(path)
        keys["history"] |= {k for row in run.rows for k in row}
        keys["summary"] |= set(run.summary)
        dotted(run.config)
    keys["summary"] |= keys["history"]
    return keys


@pytest.mark.slow
def test_dry_run_spec_loads_back_and_names_only_logged_keys(sweep, tmp_path, capsys):
    out = tmp_path / "view.json"
    assert main(["dashboard", str(sweep), "--dry-run", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"to {out}; nothing was sent to W&B" in printed
    data = json.loads(out.read_text())

    # Every key named is a key the runs logged: history for line plots and media, summary for
    # parallel coordinates and tables, config for the grouping.
    keys = logged(sweep)
    named = spec_keys(data)
    assert {key for kind, key in named if key not in keys[kind]} == set()
    for name in ("table1", "selection", "paired_tests", "checkpoint_records"):
        assert ("summary", name) in named
    assert ("history", "val_overlays") in named and ("config", "model.name") in named

    # What the tiny folds never define (onebatch: fewer slices than a batch) has no section,
    # and says so; every other validating protocol has its validation Dice and IoU plotted.
    shown = [p for p in PROTOCOLS.values() if "val" in p.stages and p.name != "onebatch"]
    for protocol in shown:
        for key in protocol.keys:
            assert ("history", f"checkpoint/val_{key}") in named
    assert not any("onebatch" in key for _, key in named)
    assert "no onebatch section" in printed

    # The spec builds back into the library's objects, which give the same spec again.
    view = ws.Workspace._from_model(internal.View.model_validate(data))
    assert view.name == "ichseg tiny/s1" and view.project == "ichseg"
    assert len(view.sections) == len(data["spec"]["section"]["panelBankConfig"]["sections"])
    again = view._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)
    assert again == {k: v for k, v in data.items() if k != "ichseg"}

    # A second dry run replaces the spec it wrote.
    assert main(["dashboard", str(sweep), "--dry-run", str(out), "--group", "tiny/s1"]) == 0


@pytest.mark.slow
@pytest.mark.reliability(
    case="dashboard panel naming a key no run logged",
    entry="ichseg dashboard",
    did="ichseg dashboard --dry-run with the lesion Dice renamed in the metric registry",
)
def test_a_renamed_metric_is_refused_when_the_view_is_built(
    sweep, tmp_path, capsys, monkeypatch, record_behaviour
):
    import ichseg.dashboard.view as view

    renamed = dict(PROTOCOLS)
    lesion = PROTOCOLS["lesion"]
    renamed["lesion"] = Protocol("lesion", ("dice_lesion3d", lesion.keys[1]), lesion.description)
    monkeypatch.setattr(view, "PROTOCOLS", renamed)
    out = tmp_path / "view.json"
    assert main(["dashboard", str(sweep), "--dry-run", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'checkpoint/val_dice_lesion3d'" in err, err
    assert "checkpoint/val_dice_lesion" in err.split("close to it:")[1]
    assert not out.exists()
    record_behaviour(f"exit 2, nothing written: {err}")


@pytest.mark.slow
@pytest.mark.reliability(
    case="dashboard without W&B credentials or server",
    entry="ichseg dashboard",
    did="ichseg dashboard SWEEP with no API key, then with a key and no reachable server",
)
def test_saving_without_credentials_or_server_refuses_in_one_line(
    sweep, tmp_path, record_behaviour
):
    refused = []
    for extra in ({}, {"WANDB_API_KEY": FAKE_KEY}):
        start = time.monotonic()
        result = ichseg_cli(["dashboard", str(sweep)], offline_env(tmp_path, **extra), timeout=120)
        took = time.monotonic() - start
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
        assert "cannot save the view to W&B" in lines[0] and "--dry-run OUT.json" in lines[0]
        assert took < 90, took
        refused.append(lines[0])
    assert "API key" in refused[0]
    record_behaviour(f"exit 2; no key: {refused[0]}; key, no server: {refused[1]}")


@pytest.mark.slow
@pytest.mark.reliability(
    case="--dry-run onto a file ichseg did not write",
    entry="ichseg dashboard --dry-run",
    did="ichseg dashboard --dry-run notes.json where notes.json holds the user's notes",
)
def test_dry_run_never_replaces_a_file_it_did_not_write(sweep, tmp_path, capsys, record_behaviour):
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}\n')
    assert main(["dashboard", str(sweep), "--dry-run", str(mine)]) == 2
    err = capsys.readouterr().err.strip()
    assert mine.read_text() == '{"my": "notes"}\n' and len(err.splitlines()) == 1
    assert "is not a view spec ichseg dashboard wrote" in err
    assert main(["dashboard", str(sweep), "--dry-run", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    record_behaviour(f"exit 2, file unchanged: {err}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("group", "--group 'tiny/other': no job run of"),
        ("no_wandb", "no W&B run file of a job"),
        ("project", "expected ENTITY/PROJECT"),
        ("under_file", "a-file: exists and is not a folder"),
        ("long_name", "File name too long"),
    ],
)
def test_what_the_view_cannot_be_built_from_is_one_line(sweep, tmp_path, capsys, change, message):
    args = ["dashboard", str(sweep), "--dry-run", str(tmp_path / "v.json")]
    if change == "group":
        args += ["--group", "tiny/other"]
    elif change == "project":
        args += ["--project", "ichseg"]
    elif change in ("under_file", "long_name"):
        (tmp_path / "a-file").write_text("keep me\n")
        name = "a-file/v.json" if change == "under_file" else "x" * 300 + ".json"
        args[3] = str(tmp_path / name)
    else:
        bare = tmp_path / "bare"
        shutil.copytree(sweep, bare, symlinks=True, copy_function=copy_or_link)
        for folder in bare.glob("**/wandb"):
            shutil.rmtree(folder)
        args[1] = str(bare)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "v.json").exists()
