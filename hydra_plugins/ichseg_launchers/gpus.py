"""`hydra/launcher=gpus`: a sweep spread over every visible GPU of one machine, one job per slot.

Hydra's joblib launcher runs the jobs in worker processes; this one also makes each job hold a
slot of a file-lock pool (`ichseg.launch.slots`) and train on that slot's GPU
(`ichseg.launch.placement`). Without a GPU the slots are CPU jobs running side by side.
Hydra finds launchers only in the `hydra_plugins` namespace, hence this module. (No
`from __future__ import annotations`: Hydra loads plugin modules outside `sys.modules`, where
`dataclass` cannot resolve string annotations.)
"""

import logging
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

from ichseg.launch.placement import SlotTask, pool_size, visible_gpus

log = logging.getLogger(__name__)


@dataclass
class GpuLauncherConf(JobLibLauncherConf):
    """joblib's settings plus the slot pool's."""

    _target_: str = "hydra_plugins.ichseg_launchers.gpus.GpuLauncher"
    # Worker processes; null: one per slot.
    n_jobs: Any = None
    # Jobs sharing one GPU at a time (small models).
    jobs_per_gpu: int = 1
    # Jobs at once on a machine without GPUs; null: one per CPU core.
    cpu_jobs: Any = None
    # Lock files of the pool; sweeps that name the same folder share its slots.
    slots_dir: str = "${hydra.sweep.dir}/.slots"


ConfigStore.instance().store(
    group="hydra/launcher", name="ichseg_gpus", node=GpuLauncherConf, provider="ichseg"
)


class GpuLauncher(JoblibLauncher):
    """joblib launcher whose jobs each hold a slot (a GPU, or a CPU share) while they run."""

    def __init__(
        self,
        jobs_per_gpu: int = 1,
        cpu_jobs: int | None = None,
        slots_dir: str = ".slots",
        **joblib: Any,
    ) -> None:
        super().__init__(**joblib)
        self.jobs_per_gpu = int(jobs_per_gpu)
        self.cpu_jobs = None if cpu_jobs is None else int(cpu_jobs)
        self.slots_dir = str(slots_dir)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        """Size the pool from the visible GPUs and wrap the task so every job holds a slot."""
        on_cpu = str(config.get("trainer", {}).get("accelerator", "auto")) == "cpu"
        n_gpus = 0 if on_cpu else visible_gpus()
        n_slots = pool_size(n_gpus, self.jobs_per_gpu, self.cpu_jobs)
        if self.joblib.get("n_jobs") is None:
            self.joblib["n_jobs"] = n_slots
        log.info(
            "%d slot(s): %s",
            n_slots,
            f"{n_gpus} GPU(s) x {self.jobs_per_gpu} job(s)" if n_gpus else "CPU jobs, no GPU",
        )
        super().setup(
            hydra_context=hydra_context,
            task_function=SlotTask(task_function, self.slots_dir, n_slots, n_gpus),
            config=config,
        )
