"""The report run of a report read from the W&B API: logged into the project and group the
report was read from, its Table 1 the report's table1.csv."""

from __future__ import annotations

import csv

import wandb

from ichseg.report.build import build_report
from ichseg.report.compute import compute
from ichseg.report.wandb_run import log_report_run
from ichseg.sweeps.local import collect_sweep
from ichseg.sweeps.wandb_offline import sweep_runs
from tests.helpers.wandb_tables import assert_table_is_csv
from tests.unit.test_report import make_sweep


def test_a_report_from_the_api_logs_its_run_into_that_project_and_group(
    tmp_path, monkeypatch, capsys
):
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    sweep = make_sweep(tmp_path / "sweep", max_epochs=200)
    results = compute(collect_sweep(sweep))
    out = build_report(results, tmp_path / "test" / "sweep" / "report-wandb")
    # Collapsed folds as a sweep with collapses writes them: one fold in a row, two in another.
    path = out / "table1.csv"
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    column = rows[0].index("collapsed_folds")
    rows[1][column], rows[2][column] = "3", "3 7"
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)

    log_report_run(results, None, out, "me/ichseg", "test/sweep")
    # The W&B service may still be writing the run file; a command's exit waits for it.
    wandb.teardown()
    printed = capsys.readouterr()
    assert "logged offline in group test/sweep" in printed.out and printed.err == "", printed
    runs, skipped = sweep_runs(out.parent)
    assert skipped == [] and len(runs) == 1, (skipped, list(out.parent.rglob("*")))
    (run,) = runs
    assert run.path[0].startswith(str(out.parent / "wandb"))
    assert (run.entity, run.project, run.group, run.job_type) == (
        "me",
        "ichseg",
        "test/sweep",
        "report",
    )
    assert_table_is_csv(run, "table1", path)
    _, logged = run.table("table1")
    assert [row[column] for row in logged[:3]] == ["3", "3 7", None]
