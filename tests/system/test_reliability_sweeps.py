"""A sweep survives its own jobs: a failed job is listed at the end instead of stopping the rest,
a diverged or endless training is refused, a refused re-run changes nothing, Ctrl-C resumes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch

from ichseg.jobs.records import read_job, read_records
from tests.helpers.runs import LAST, finish, launch, train

pytestmark = pytest.mark.slow

TINY = ["experiment=tiny", "logger=none", "num_threads=1"]


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("train.py: error: ")]


@pytest.mark.reliability(entry="train.py -m")
@pytest.mark.parametrize(
    "launcher",
    ["basic", "local", "gpus"],
)
def test_a_failed_job_does_not_stop_the_sweep(tmp_path, record_behaviour, launcher):
    sweep = tmp_path / "experiments" / "s"
    # The first job diverges in training: a config error would refuse the whole sweep first.
    args = ["-m", *TINY, "model=dunet", "fold=0", "trainer.max_epochs=2"]
    args += ["model.module.lr=1e30,1e-3"]
    args += [f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=lr${model.module.lr}"]
    if launcher != "basic":
        args.append(f"hydra/launcher={launcher}")
        args.append(
            "hydra.launcher.n_jobs=2" if launcher == "local" else "hydra.launcher.cpu_jobs=2"
        )
    result = train(args, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert read_job(sweep / "lr0.001")["status"] == "done"  # the job after the failed one ran
    lines = result.stderr.strip().splitlines()
    head = lines.index("1 of 2 jobs failed:")
    failed, command = lines[head + 1], lines[head + 2]
    assert "model.module.lr=1e+30" in failed and "NaN or infinite" in failed
    assert f"hydra.sweep.dir={sweep}" in command and "the other 1 finished" in command
    record_behaviour(
        "exit 1 after the other job finished (done); the sweep's last lines: "
        + " / ".join(lines[head : head + 3]),
        case=f"a job fails with a one-line error ({launcher} launcher)",
        did=f"-m model.module.lr=1e30,1e-3 with hydra/launcher={launcher}: the first diverges",
    )


@pytest.mark.reliability(case="loss becomes NaN", entry="train.py -m")
def test_a_diverged_job_fails_with_one_line_and_records_nothing(tmp_path, record_behaviour):
    sweep = tmp_path / "experiments" / "nan"
    args = [
        "-m",
        *TINY,
        "model=dunet",
        "fold=0",
        "trainer.max_epochs=2",
        "model.module.lr=1e30,1e-3",
    ]
    args += [f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=lr${model.module.lr}"]
    result = train(args, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    diverged = sweep / "lr1e+30"
    state = read_job(diverged)
    assert state["status"] == "failed" and "NaN or infinite" in state["error"]
    assert read_records(diverged) == [] and not (diverged / "checkpoints").exists()
    assert read_job(sweep / "lr0.001")["status"] == "done"
    (line,) = error_lines(result.stderr)
    record_behaviour(
        f"job.json failed, no record or checkpoint of the diverged epoch, the other job done, "
        f"sweep exit 1; stderr: {line}",
        did="-m model.module.lr=1e30,1e-3 (tiny, 2 epochs): the first diverges in epoch 1",
    )


@pytest.mark.reliability(entry="train.py")
@pytest.mark.parametrize(
    "override",
    [
        "trainer.max_epochs=0",
        "trainer.max_epochs=-1",
        "trainer.max_epochs=abc",
        "trainer.max_steps=0",
    ],
)
def test_a_training_that_records_nothing_or_never_ends_is_refused(
    tmp_path, record_behaviour, override
):
    result = train([*TINY, override], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    key, value = override.split("=")
    # The value as written, or quoted as a string ('abc') by the schema.
    assert any(f"{key}={v}" in line for v in (value, repr(value))) and "expected" in line
    assert list(tmp_path.rglob("job.json")) == []
    record_behaviour(
        f"exit 2, no job started: {line}",
        case=f"{key}={value}",
        did=f"python train.py experiment=tiny {override}",
    )


def _stat(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.reliability(entry="train.py -m into a finished sweep")
@pytest.mark.parametrize("override", ["model.module.lr=0.5", "data.seed=1"])
def test_a_refused_rerun_changes_nothing(tiny_sweep, record_behaviour, override):
    before = _stat(tiny_sweep)
    multirun = (tiny_sweep / "multirun.yaml").read_bytes()
    args = ["-m", "model=unet,dunet", "fold=0..9", "experiment=tiny", override]
    result = train([*args, f"hydra.sweep.dir={tiny_sweep}"], tiny_sweep.parents[2])
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "another configuration" in lines[0]
        and "nothing was changed" in lines[0]
    )
    assert (tiny_sweep / "multirun.yaml").read_bytes() == multirun
    assert _stat(tiny_sweep) == before
    record_behaviour(
        f"exit 2, multirun.yaml and every file unchanged (size and mtime): {lines[0][:300]}",
        case=f"re-run with {override} into a finished sweep",
        did=f"the 20-job tiny sweep's command again with {override}",
    )


@pytest.mark.reliability(case="SIGINT (Ctrl-C)", entry="train.py -m, then re-run")
def test_ctrl_c_saves_a_checkpoint_and_a_rerun_finishes(tmp_path, record_behaviour):
    sweep = tmp_path / "experiments" / "int"
    job = sweep / "dunet-fold1"
    proc = launch(tmp_path, sweep, "data.batch_size=1")
    first, last = job / "checkpoints" / "epoch=0001.ckpt", job / LAST
    deadline = time.monotonic() + 300
    while not (first.exists() and last.exists()) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.25)
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc, sweep)
    assert code == 128 + signal.SIGINT, err[-3000:]
    state = read_job(job)
    assert state["status"] == "interrupted", state
    (line,) = [ln for ln in err.splitlines() if "stopped by SIGINT" in ln]
    assert "run the same command to resume" in line

    def step(path: Path) -> int:
        return torch.load(path, map_location="cpu", weights_only=False)["global_step"]

    assert step(first) < step(last) == state["stopped_at_step"]
    line = line.replace(str(state["stopped_at_step"]), "N")
    code, err = finish(launch(tmp_path, sweep, "data.batch_size=1"), sweep)
    assert code == 0, err[-3000:]
    state = read_job(job)
    assert state["status"] == "done" and state["resumed_from"].endswith("last.ckpt")
    assert [r["epoch"] for r in read_records(job)] == [1, 2]
    record_behaviour(
        f"exit 130, job.json status interrupted, last.ckpt saved mid-epoch 2; stderr: "
        f"{line}; the same command resumes and "
        "finishes (epochs 1-2 once each)",
        did="SIGINT early in epoch 2 (batch size 1), then the same command",
    )
