"""Where a sweep job trains: its slot's GPU (or the CPU), and who requeues it on SLURM.

`hydra/launcher=gpus` wraps the task in `SlotTask`: the job holds a slot of the sweep's pool
(`ichseg.launch.slots`) for its lifetime and trains on that slot's GPU. The device is chosen by
index (`torch.cuda.set_device(k)` and `Trainer(devices=[k])`), never by narrowing
`CUDA_VISIBLE_DEVICES`: a reused joblib worker may have initialised CUDA during an earlier job,
after which that variable no longer changes anything, while an index into the visible devices
always does. `trainer_overrides()` hands run_job the Trainer arguments this implies.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ichseg.launch import LaunchError
from ichseg.launch.slots import acquire_slot

log = logging.getLogger(__name__)

# The GPU index of the job this process is running now (None: no slot, or a CPU slot).
_assigned_gpu: int | None = None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM or cgroup limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> int:
    """CUDA devices this process can see (CUDA_VISIBLE_DEVICES applies), without creating a
    CUDA context, so that processes started later still get a clean one."""
    from lightning_fabric.accelerators.cuda import num_cuda_devices

    return num_cuda_devices()


def pool_size(n_gpus: int, jobs_per_gpu: int, cpu_jobs: int | None) -> int:
    """Slots of the pool: jobs_per_gpu per GPU; with no GPU, `cpu_jobs` (None: one per core)."""
    if jobs_per_gpu < 1:
        raise LaunchError(f"hydra.launcher.jobs_per_gpu={jobs_per_gpu}: expected an integer >= 1")
    if n_gpus:
        return n_gpus * jobs_per_gpu
    if cpu_jobs is not None and cpu_jobs < 1:
        raise LaunchError(f"hydra.launcher.cpu_jobs={cpu_jobs}: expected an integer >= 1 or null")
    return cpu_jobs or usable_cores()


def slot_gpu(slot: int, n_gpus: int) -> int | None:
    """The GPU of `slot` (None on a machine without GPUs).

    Round robin, so the first jobs of a sweep land on different GPUs; slot i and slot
    i + n_gpus share a GPU when jobs_per_gpu > 1.
    """
    return slot % n_gpus if n_gpus else None


@contextlib.contextmanager
def placed_on(gpu: int | None, threads: int) -> Iterator[None]:
    """Make `gpu` this process's device (and `threads` its CPU threads) for the block."""
    global _assigned_gpu
    import torch

    torch.set_num_threads(threads)
    if gpu is not None:
        torch.cuda.set_device(gpu)
    _assigned_gpu = gpu
    try:
        yield
    finally:
        _assigned_gpu = None
        if gpu is not None:
            # A reused worker must not keep cached memory on a GPU another job now owns.
            gc.collect()
            torch.cuda.empty_cache()


def in_slurm_job() -> bool:
    """Lightning's test for a SLURM job step (SLURMEnvironment.detect), minus its warning that
    srun exists but is unused, which every non-SLURM run on a SLURM login node would print."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in (
        "bash",
        "interactive",
    )


def trainer_overrides() -> dict[str, Any]:
    """Trainer arguments that follow from where this job runs.

    On a GPU slot: that GPU. Under SLURM: Lightning's own requeue handler off, because
    submitit requeues the job and run_job resumes it from last.ckpt.
    """
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    kwargs: dict[str, Any] = {}
    if _assigned_gpu is not None:
        kwargs.update(accelerator="gpu", devices=[_assigned_gpu])
    if in_slurm_job():
        kwargs["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    return kwargs


@dataclass(frozen=True)
class SlotTask:
    """A Hydra task function that runs each job holding a slot of the pool, on its device."""

    task: Callable[[Any], Any]
    pool_dir: str
    n_slots: int
    n_gpus: int

    def __call__(self, cfg: Any) -> Any:
        """Wait for a free slot, train on its device, give the slot back (also on a crash)."""
        with acquire_slot(self.pool_dir, self.n_slots) as slot:
            gpu = slot_gpu(slot, self.n_gpus)
            threads = max(1, usable_cores() // self.n_slots)
            where = f"cuda:{gpu}" if gpu is not None else f"CPU, {threads} thread(s)"
            log.info("slot %d of %d (%s): %s", slot, self.n_slots, self.pool_dir, where)
            with placed_on(gpu, threads):
                return self.task(cfg)
