"""What a job prints: one line per epoch, one closing line, the sweep's folder; no library noise."""

from __future__ import annotations

import re

import pytest

from ichseg import cli
from tests.helpers.runs import train

NOISE = (
    "💡 Tip",
    "litlogger",
    "Find logs at",
    "Run history",
    "└──",
    "GPU available",
    "anonymous setting",
)


@pytest.mark.slow
@pytest.mark.reliability(case="what a sweep job prints", entry="python train.py -m experiment=tiny")
def test_a_job_prints_its_epochs_its_result_and_where_the_sweep_is(tmp_path, record_behaviour):
    sweep = tmp_path / "experiments" / "tiny" / "s"
    args = ["-m", "experiment=tiny", "fold=1", f"hydra.sweep.dir={sweep}", "logger=wandb"]
    proc = train(args, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    epochs = re.findall(r"dunet-fold1: epoch (\d+)/2: train .*loss .*; val .*loss", out)
    assert epochs == ["1", "2"], out
    closing = [line for line in out.splitlines() if "dunet-fold1: done, epoch 2: val dice_" in line]
    assert len(closing) == 1 and str(sweep / "dunet-fold1") in closing[0], out
    last = out.strip().splitlines()
    assert any(f"make report SWEEP={sweep}" in line for line in last[-8:]), out
    for noise in NOISE:
        assert noise not in out, noise
    log = (sweep / "dunet-fold1" / "train.log").read_text()
    assert "epoch 2/2" in log and "done" in log, log
    record_behaviour(
        f"{len(out.splitlines())} lines in all: one per epoch, then {closing[0].split('] ')[-1]}; "
        "the sweep ends on 'make report SWEEP=<sweep>'; train.log holds the same lines"
    )


@pytest.mark.slow
@pytest.mark.reliability(case="report of a single run", entry="python train.py, then ichseg report")
def test_a_single_run_lands_in_runs_and_reports(tmp_path, capsys, record_behaviour):
    proc = train(["experiment=tiny", "logger=none", "model=unet"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "experiments" / "runs").iterdir()
    assert run.name.endswith("_unet-fold0"), run
    assert "unet-fold0: done, epoch 2" in proc.stdout + proc.stderr
    assert cli.main(["report", str(run), "--no-test"]) == 0, capsys.readouterr().err
    report = (run / "report" / "report.md").read_text()
    assert "unet" in report.lower()
    record_behaviour(
        f"the run is experiments/runs/<ts>_unet-fold0; {capsys.readouterr().out.strip()}",
        did="python train.py experiment=tiny model=unet; ichseg report <that folder> --no-test",
    )
