"""End to end: the real `train.py -m model=unet,dunet fold=0..9` command on a tiny experiment."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from ichseg.data.prepare import load_prepared
from ichseg.jobs.records import read_history, read_job, read_records
from ichseg.metrics import METRICS_VERSION, stage_keys
from ichseg.training.module import SegmentationModule
from tests.helpers.runs import ROOT, train

TRAIN_KEYS = {"loss", *stage_keys("train")}

pytestmark = pytest.mark.slow


def test_sweep_runs_twenty_jobs_with_a_record_for_every_checkpoint(tiny_sweep):
    jobs = sorted(p.name for p in tiny_sweep.iterdir() if p.is_dir() and "-fold" in p.name)
    assert jobs == sorted(f"{m}-fold{k}" for m in ("unet", "dunet") for k in range(10))
    for name in jobs:
        job_dir = tiny_sweep / name
        model, fold = name.split("-fold")
        state = read_job(job_dir)
        assert state["status"] == "done" and state["model"] == model and state["fold"] == int(fold)
        records = read_records(job_dir)
        assert [r["epoch"] for r in records] == [1, 2]
        for record in records:
            assert (record["model"], record["fold"]) == (model, int(fold))
            assert set(record["train"]) == TRAIN_KEYS
            assert set(record["val"]) == {"loss", *stage_keys("val")}
            assert record["metrics_version"] == METRICS_VERSION
            assert (job_dir / record["checkpoint"]).is_file()
        assert [int(r["epoch"]) for r in read_history(job_dir)] == [1, 2]


def test_every_job_has_its_own_wandb_offline_run(tiny_sweep):
    runs = sorted(tiny_sweep.glob("*-fold*/wandb/offline-run-*"))
    assert len(runs) == 20
    # One run per job folder: a job that logged into another job's run would leave a folder
    # without a run (the bug wandb.finish() prevents).
    assert len({run.parents[1] for run in runs}) == 20
    for run in runs:
        assert any(run.glob("run-*.wandb")), run


def test_folds_validate_on_their_own_split(tiny_sweep):
    state = read_job(tiny_sweep / "dunet-fold3")
    data = load_prepared(state["cache_dir"])
    vals = [set(fold["val"]) for fold in data.splits["folds"]]
    assert len(vals) == 10 and set.union(*vals).isdisjoint(data.splits["test"])


def test_recorded_val_metrics_match_an_independent_recomputation(tiny_sweep):
    """Reload a checkpoint, predict its fold's validation slices, recompute Dice with numpy."""
    job_dir = tiny_sweep / "dunet-fold3"
    record = read_records(job_dir)[-1]
    module = SegmentationModule.load_from_checkpoint(
        job_dir / record["checkpoint"], map_location="cpu", weights_only=False
    ).eval()
    data = load_prepared(read_job(job_dir)["cache_dir"])
    row = {sid: i for i, sid in enumerate(data.ids)}
    val = [row[sid] for sid in data.splits["folds"][3]["val"]]
    images = torch.from_numpy(data.images[val]).float().div(255).unsqueeze(1)
    with torch.no_grad():
        pred = (torch.sigmoid(module(images)) > 0.5).squeeze(1).numpy()
    truth = data.masks[val]
    tp = (pred & truth).sum((1, 2))
    fp = (pred & ~truth).sum((1, 2))
    fn = (~pred & truth).sum((1, 2))
    pooled = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())
    lesion = truth.any((1, 2))
    per_slice = 2 * tp[lesion] / np.maximum(2 * tp[lesion] + fp[lesion] + fn[lesion], 1)
    assert record["val"]["dice_pooled"] == pytest.approx(pooled, abs=1e-6)
    assert record["val"]["dice_lesion"] == pytest.approx(per_slice.mean(), abs=1e-6)
    positive = (pred.sum((1, 2)) > 0)[lesion].mean()
    assert record["val"]["sensitivity_detection"] == pytest.approx(positive, abs=1e-9)


def test_rerun_skips_finished_jobs(tiny_sweep):
    root = tiny_sweep.parents[2]
    before = {p: p.stat().st_mtime_ns for p in tiny_sweep.glob("*-fold*/records.jsonl")}
    result = train(
        ["-m", "model=unet,dunet", "fold=0,1", "experiment=tiny", f"hydra.sweep.dir={tiny_sweep}"],
        root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        result.stdout.count("already finished, skipped")
        + result.stderr.count("already finished, skipped")
        == 4
    )
    after = {p: p.stat().st_mtime_ns for p in tiny_sweep.glob("*-fold*/records.jsonl")}
    assert before == after


@pytest.mark.reliability(
    case="sweep directory of another experiment",
    did="re-run into a finished sweep folder with model.module.lr=0.5",
    entry="train.py -m",
)
def test_sweep_dir_of_another_config_is_refused(tiny_sweep, record_behaviour):
    root = tiny_sweep.parents[2]
    result = train(
        [
            "-m",
            "model=dunet",
            "fold=0",
            "experiment=tiny",
            "model.module.lr=0.5",
            f"hydra.sweep.dir={tiny_sweep}",
        ],
        root,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds results of another configuration" in lines[0]
    record_behaviour(f"exit 2, the job is not started: {lines[0]}")


@pytest.mark.reliability(
    case="SIGKILL mid-epoch, sweep re-run",
    did="SIGKILL once last.ckpt of epoch 1 exists (3 epochs, deterministic, CPU), same command",
    entry="train.py -m",
)
def test_killed_job_resumes_and_matches_an_uninterrupted_run(tmp_path, record_behaviour):
    """SIGKILL after the first checkpoint; the re-run resumes and ends with identical records."""
    common = ["-m", "model=dunet", "fold=2", "experiment=tiny", "trainer.max_epochs=3"]
    common += ["deterministic=true", "logger=none"]
    reference = tmp_path / "experiments" / "ref"
    assert train([*common, f"hydra.sweep.dir={reference}"], tmp_path).returncode == 0

    sweep = tmp_path / "experiments" / "killed"
    env = {**os.environ, "ICHSEG_ROOT": str(tmp_path), "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *common, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = sweep / "dunet-fold2" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    job_dir = sweep / "dunet-fold2"
    assert read_job(job_dir)["status"] == "running"
    assert len(read_records(job_dir)) < 3

    result = train([*common, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = read_job(job_dir)
    assert state["status"] == "done" and state["resumed_from"].endswith("last.ckpt")
    resumed = read_records(job_dir)
    expected = read_records(reference / "dunet-fold2")
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert json.dumps(resumed, sort_keys=True) == json.dumps(expected, sort_keys=True)
    record_behaviour(
        "job.json stays 'running'; the re-run resumes from last.ckpt and its records.jsonl "
        "(epochs 1-3, one row each) equals the uninterrupted run's"
    )
