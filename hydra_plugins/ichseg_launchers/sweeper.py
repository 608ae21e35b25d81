"""`hydra/sweeper=ichseg` (train.py's default): Hydra's basic sweeper for every launcher
(basic, local, gpus, slurm), plus `ichseg.launch.sweep`'s checks.

Every job's config is validated (`ichseg.config_schema`) and the sweep folder checked before
`multirun.yaml` is written (and a folder holding another command's is refused), so a refused
sweep or re-run changes nothing; every job runs even when some fail, and the failed ones end
the sweep with one line each (exit status 1; a refused config or sweep folder: 2).
(No `from __future__ import annotations`: see gpus.py.)
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import filter_overrides
from omegaconf import DictConfig

from ichseg.arguments import output_dir
from ichseg.config_schema import validate
from ichseg.errors import IchsegError
from ichseg.launch.sweep import check_sweep_dir, failure_report, record_sweep


@dataclass
class IchsegSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.ichseg_launchers.sweeper.IchsegSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="ichseg", node=IchsegSweeperConf, provider="ichseg"
)


def check_job_config(overrides: list[str], config: DictConfig) -> None:
    """`validate` of one job's config, its refusal naming the job's overrides."""
    try:
        validate(config)
    except IchsegError as exc:
        raise IchsegError(f"{' '.join(filter_overrides(overrides))}: {exc}") from None


class IchsegSweeper(BasicSweeper):
    """BasicSweeper.sweep, with the sweep folder checked first and failures reported last."""

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(
            parser.parse_overrides(params_conf), self.max_batch_size
        )
        batches = list(self.overrides)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        loader = self.hydra_context.config_loader
        try:
            output_dir(sweep_dir, "hydra.sweep.dir")
            jobs = [list(job) for batch in batches for job in batch]
            configs = [loader.load_sweep_config(self.config, job) for job in jobs]
            for job, config in zip(jobs, configs, strict=True):
                check_job_config(job, config)
            check_sweep_dir(configs, str(sweep_dir))
            output_dir(sweep_dir, "hydra.sweep.dir", create=True)
            record_sweep(self.config, sweep_dir)
        except IchsegError as exc:  # refused before anything is written: train.py's one line
            print(f"train.py: error: {exc}", file=sys.stderr)
            sys.exit(2)
        returns, results, initial_job_idx = [], [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            done = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            initial_job_idx += len(batch)
            returns.append(done)
            results.extend(done)
        failures = failure_report(results, str(sweep_dir))
        if failures:
            print(failures, file=sys.stderr)
            sys.exit(1)
        return returns
