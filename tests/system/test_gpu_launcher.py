"""`hydra/launcher=gpus`: slot -> device placement, and a real sweep on a machine without GPUs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from ichseg.errors import IchsegError
from ichseg.jobs.records import read_job
from ichseg.launch import placement
from ichseg.launch.placement import SlotTask, pool_size, slot_gpu, trainer_overrides
from ichseg.launch.slots import acquire_slot
from tests.helpers.runs import ROOT


def test_pool_size_and_round_robin_gpus():
    assert pool_size(n_gpus=4, jobs_per_gpu=2, cpu_jobs=None) == 8
    assert pool_size(n_gpus=0, jobs_per_gpu=2, cpu_jobs=3) == 3
    assert pool_size(n_gpus=0, jobs_per_gpu=1, cpu_jobs=None) == placement.usable_cores()
    # 8 slots on 4 GPUs: each GPU serves exactly two slots, the first four on four GPUs.
    gpus = [slot_gpu(s, 4) for s in range(8)]
    assert gpus[:4] == [0, 1, 2, 3] and sorted(gpus) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert slot_gpu(5, 0) is None
    with pytest.raises(IchsegError, match=r"hydra.launcher.jobs_per_gpu=0: expected"):
        pool_size(n_gpus=2, jobs_per_gpu=0, cpu_jobs=None)


def test_each_job_trains_on_its_slots_gpu_even_in_a_reused_worker(tmp_path, monkeypatch):
    """Two jobs in one process (a reused joblib worker), with CUDA 'initialised' by the first:
    each still gets its own slot's GPU, through set_device and Trainer(devices=[k])."""
    selected = []
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: bool(selected))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    task = SlotTask(lambda cfg: trainer_overrides(), str(tmp_path), n_slots=4, n_gpus=2)

    with acquire_slot(tmp_path, 4) as held:  # another job holds slot 0 (GPU 0)
        assert held == 0
        first = task(None)
        with acquire_slot(tmp_path, 4) as also_held:  # ... and now slot 1 (GPU 1) too
            assert also_held == 1
            second = task(None)

    assert first == {"accelerator": "gpu", "devices": [1]}  # slot 1
    assert second == {"accelerator": "gpu", "devices": [0]}  # slot 2 -> GPU 0
    assert selected == [1, 0]
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible
    assert trainer_overrides() == {}  # nothing leaks into the next job of this worker


def test_no_gpu_slot_leaves_the_trainer_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    task = SlotTask(lambda cfg: (trainer_overrides(), torch.get_num_threads()), str(tmp_path), 2, 0)
    overrides, threads = task(None)
    assert overrides == {}
    assert threads == max(1, placement.usable_cores() // 2)


@pytest.mark.slow
def test_sweep_without_gpu_runs_cpu_jobs_side_by_side_one_per_slot(tmp_path):
    sweep = tmp_path / "experiments" / "tiny" / "gpus"
    env = {**os.environ, "ICHSEG_ROOT": str(tmp_path), "WANDB_MODE": "disabled"}
    args = ["-m", "hydra/launcher=gpus", "hydra.launcher.cpu_jobs=2", "model=unet,dunet"]
    args += ["fold=0,1", "experiment=tiny", "logger=none", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 slot(s): CPU jobs, no GPU" in result.stdout + result.stderr

    threads = max(1, placement.usable_cores() // 2)
    held = []
    for job_dir in sorted(sweep.glob("*-fold*")):
        state = read_job(job_dir)
        assert state["status"] == "done"
        log = (job_dir / "train.log").read_text().splitlines()
        slot_lines = [ln for ln in log if "ichseg.launch.placement" in ln]
        assert len(slot_lines) == 1, log
        match = re.search(r"slot (\d) of 2 \(.*\): CPU, (\d+) thread", slot_lines[0])
        assert int(match[2]) == threads
        slot = int(match[1])
        # run_job's start and finish times lie inside the time the job held its slot.
        held.append({"slot": slot, "start": state["started"], "end": state["finished"]})
    assert len(held) == 4
    for a in held:
        for b in held:
            if a is not b and a["slot"] == b["slot"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], held
    # Two jobs ran at the same time (the pool is not a queue of one).
    assert any(
        a["start"] < b["end"] and b["start"] < a["end"] for a in held for b in held if a is not b
    ), held
