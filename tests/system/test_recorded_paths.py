"""A sweep trained with relative paths reports from anywhere: the paths it records are absolute,
and those an earlier ichseg recorded relative are read against the folder the job ran in."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ichseg.data.phantom import write_phantom
from tests.helpers.runs import ROOT, TINY, train


def _report(sweep: str, cwd: Path) -> subprocess.CompletedProcess:
    """What the printed `make report SWEEP=...` runs, in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "ichseg.cli", "report", sweep, "--experiments", "experiments"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


@pytest.mark.reliability(
    case="sweep trained with relative paths, reported from elsewhere",
    did="train.py -m with data.source.root=rel_bhsd, paths.root_dir=. and "
    "hydra.sweep.dir=rel_sweep in one folder; the printed make report command run in the project "
    "folder; then the same "
    "with the sweep's records rewritten relative, as an earlier ichseg wrote them",
    entry="train.py -m, ichseg report",
)
def test_a_sweep_with_relative_paths_reports_from_anywhere(tmp_path, record_behaviour):
    work = tmp_path / "work"
    write_phantom(work / "rel_bhsd", patients=16, size=64, layout="bhsd")
    args = [*TINY, "model=dunet", "data=bhsd", "data.source.root=rel_bhsd", "paths.root_dir=."]
    done = train([*args, "hydra.sweep.dir=rel_sweep"], work, env={"WANDB_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-2000:]
    printed = re.search(r"report: make report SWEEP=(\S+)", done.stdout + done.stderr)
    assert printed, (done.stdout + done.stderr)[-2000:]
    sweep = work / "rel_sweep"
    assert printed[1] == str(sweep)

    job = sweep / "dunet-fold1"
    config = yaml.safe_load((job / "config.yaml").read_text())
    state = json.loads((job / "job.json").read_text())
    cache = work / "data" / "cache" / Path(state["cache_dir"]).name
    assert config["data"]["source"]["root"] == str(work / "rel_bhsd")
    assert config["data"]["cache_root"] == str(work / "data" / "cache")
    assert state["cache_dir"] == str(cache)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["source_facts"]["record"]["root"] == str(work / "rel_bhsd")
    assert meta["release_root"] == str((work / "rel_bhsd").resolve())

    run = _report(printed[1], ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    text = (sweep / "report" / "report.md").read_text()
    assert "Not scored" not in text.split("## Test set")[1].split("\n## ")[0]
    behaviour = run.stdout.strip()

    # As an earlier ichseg recorded them: relative to the folder train.py ran in.
    config["data"]["source"]["root"] = "rel_bhsd"
    config["data"]["cache_root"] = "data/cache"
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    state["cache_dir"] = f"data/cache/{cache.name}"
    (job / "job.json").write_text(json.dumps(state))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = _report(str(sweep), elsewhere)
    assert run.returncode == 0, run.stderr[-2000:]
    text = (sweep / "report" / "report.md").read_text()
    assert "Not scored" not in text.split("## Test set")[1].split("\n## ")[0]
    assert f"Prepared cache: `{cache}`" in text
    record_behaviour(f"exit 0 both times, test set scored; {behaviour}")
