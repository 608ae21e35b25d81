"""`ichseg report` logs the report as a W&B run of job type `report` into the jobs' group, read
back here from its offline run file with the project's own reader."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ichseg.report.render import fmt
from ichseg.sweeps.wandb_offline import SWEEP_RUN_FILES, sweep_runs
from tests.helpers.runs import copy_or_link
from tests.helpers.wandb_tables import assert_table_is_csv
from tests.system.test_report_sources import ichseg_cli, offline_env


@pytest.fixture
def sweep(finished_sweep, tmp_path) -> Path:
    """A copy of the tiny sweep (its jobs logged to W&B offline), without the report runs other
    tests may have logged into the shared one."""
    copy = tmp_path / "tiny" / "s1"
    shutil.copytree(finished_sweep, copy, symlinks=True, copy_function=copy_or_link)
    shutil.rmtree(copy / "wandb", ignore_errors=True)
    shutil.rmtree(copy / "report", ignore_errors=True)
    return copy


def job_run_files(sweep: Path) -> dict[Path, str]:
    """Every file under the jobs' wandb folders, with its sha256."""
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sweep.glob("*/wandb/**/*")
        if p.is_file() and not p.is_symlink()
    }


def report_runs(sweep: Path) -> list:
    return [run for run in sweep_runs(sweep)[0] if run.job_type == "report"]


@pytest.mark.slow
def test_report_logs_a_run_into_the_jobs_group_whose_table1_is_the_csv(sweep, tmp_path):
    env = offline_env(tmp_path)  # no credentials, no reachable server: offline needs neither
    jobs_before = job_run_files(sweep)
    result = ichseg_cli(["report", str(sweep)], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logged offline in group tiny/s1" in result.stdout, result.stdout
    out = sweep / "report"

    runs, skipped = sweep_runs(sweep)
    assert skipped == []
    jobs = [run for run in runs if run.job_type == "train"]
    (report,) = report_runs(sweep)
    assert len(jobs) == 20 and {(r.group, r.project) for r in jobs} == {("tiny/s1", "ichseg")}
    assert (report.group, report.project, report.state) == ("tiny/s1", "ichseg", "finished")
    assert Path(report.path[0]).is_relative_to(sweep / "wandb")
    assert report.config["protocol"] == "paper" and report.config["sweep"] == str(sweep)

    assert_table_is_csv(report, "table1", out / "table1.csv")
    summary = json.loads((out / "summary.json").read_text())
    _, selection = report.table("selection")
    assert len(selection) == sum(len(s["models"]) for s in summary["selection"].values())
    columns, _ = report.table("selection")
    for row in selection:
        got = dict(zip(columns, row, strict=True))
        chosen = summary["selection"][got["protocol"]]["models"][got["model"]]
        assert got["epoch"] == chosen["epoch"] and got["val_dice_mean"] == chosen["val_dice_mean"]
    _, paired = report.table("paired_tests")
    assert len(paired) == sum(len(c) for c in summary["comparisons"].values())

    # The test-set scores: each logged row is a row of report.md's test table.
    columns, rows = report.table("test_slices")
    text = (out / "report.md").read_text()
    assert rows
    for row in rows:
        got = dict(zip(columns, row, strict=True))
        metrics = [fmt(v) for v in row[columns.index("slices") + 1 :]]
        cells = [got["architecture"], str(got["epoch"]), got["scoring"], got["subset"]]
        line = "| " + " | ".join([*cells, str(got["slices"]), *metrics]) + " |"
        assert line in text, line
    figures = {k for row in report.rows for k in row if k.startswith("figures/")}
    assert figures == {f"figures/{p.stem}" for p in out.glob("*.png")} and figures

    # Again: one more report run; the jobs' runs are never touched. --no-wandb logs none.
    result = ichseg_cli(["report", str(sweep), "--no-test"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(report_runs(sweep)) == 2
    result = ichseg_cli(["report", str(sweep), "--no-test", "--no-wandb"], env)
    assert result.returncode == 0 and "W&B" not in result.stdout + result.stderr
    assert len(report_runs(sweep)) == 2
    assert job_run_files(sweep) == jobs_before


@pytest.mark.slow
@pytest.mark.reliability(
    case="report of a sweep logged without W&B",
    entry="ichseg report",
    did="ichseg report on the tiny sweep with its jobs' wandb folders removed",
)
def test_a_sweep_without_wandb_gets_no_report_run_and_no_error(sweep, tmp_path, record_behaviour):
    for folder in sweep.glob("*/wandb"):
        shutil.rmtree(folder)
    result = ichseg_cli(["report", str(sweep), "--no-test"], offline_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "" and "W&B" not in result.stdout
    assert not (sweep / "wandb").exists()
    assert not any(sweep.glob(SWEEP_RUN_FILES[0]))
    record_behaviour(f"exit 0, no W&B run, no message; stdout: {result.stdout.strip()}")


@pytest.mark.slow
@pytest.mark.reliability(
    case="W&B fails while the report run is logged",
    entry="ichseg report",
    did="WANDB_MODE=online without credentials or a reachable server",
)
def test_a_wandb_failure_keeps_the_report_and_says_so_in_one_line(
    sweep, tmp_path, record_behaviour
):
    env = offline_env(tmp_path, WANDB_MODE="online")
    result = ichseg_cli(["report", str(sweep), "--no-test"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "warning: W&B report run not logged" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert (sweep / "report" / "table1.csv").is_file() and report_runs(sweep) == []
    record_behaviour(f"exit 0, report written; stderr: {lines[0]}")
