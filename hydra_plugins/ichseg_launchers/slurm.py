"""`hydra/launcher=slurm`: the sweep as one SLURM job array, through hydra-submitit-launcher.

The stock launcher, plus: the time limit is checked before anything is submitted, the jobs are
awaited together and a failed or cancelled one ends the sweep with one line naming it
(`ichseg.launch.slurm`), and each job registers ichseg's config resolvers before its config is
composed (the job runs `python -m submitit.core._submit`, not train.py).

A pre-empted or timed-out job is requeued by submitit (Lightning's own SLURM requeue is off,
see `ichseg.launch.placement.trainer_overrides`) and, being the same job again, resumes from
its `last.ckpt`.
"""

import logging
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)
from omegaconf import OmegaConf

from ichseg.config import register_resolvers
from ichseg.launch.slurm import check_time_limit, wait_for_jobs

log = logging.getLogger(__name__)


class SlurmLauncher(SubmititSlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher with ichseg's checks and failure report."""

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        """Refuse a time limit too short to train, before the sweep folder is made."""
        check_time_limit(int(self.params["timeout_min"]), int(self.params["signal_delay_s"]))
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """One job, on a compute node (again after a requeue)."""
        register_resolvers()
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        """Submit the jobs as one array, wait for all of them, report every failure."""
        import submitit

        assert self.config is not None
        params = dict(self.params)
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=params["submitit_folder"],
            slurm_max_num_timeout=params["max_num_timeout"],
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in base else f"{self._EXECUTOR}_{k}": v
                for k, v in params.items()
                if k not in init_keys
            }
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("SLURM job array, sweep output dir: %s", sweep_dir)
        names, job_params = [], []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            names.append(" ".join(filter_overrides(overrides)))
            log.info("\t#%d : %s", idx, names[-1])
            state = Singleton.get_state()
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", state))
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        log.info("submitted SLURM jobs %s", ", ".join(job.job_id for job in jobs))
        return wait_for_jobs(jobs, names, str(sweep_dir))
