"""`hydra/sweeper=ichseg` (train.py's default): Hydra's basic sweeper for every launcher
(basic, local, gpus, slurm), plus `ichseg.launch.sweep`'s checks.

The sweep folder is checked before `multirun.yaml` is written (and a folder holding another
command's is refused), so a refused re-run changes nothing; every job runs even when some fail,
and the failed ones end the sweep with one line each (exit status 1; a refused sweep folder: 2).
(No `from __future__ import annotations`: see gpus.py.)
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser

from ichseg.atomic import writable_dir
from ichseg.errors import IchsegError
from ichseg.launch.sweep import check_sweep_dir, failure_report, record_sweep


@dataclass
class IchsegSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.ichseg_launchers.sweeper.IchsegSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="ichseg", node=IchsegSweeperConf, provider="ichseg"
)


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
            if sweep_dir.exists() and not sweep_dir.is_dir():
                raise IchsegError(f"hydra.sweep.dir {sweep_dir}: exists and is not a folder")
            check_sweep_dir(
                [loader.load_sweep_config(self.config, list(job)) for b in batches for job in b],
                str(sweep_dir),
            )
            writable_dir(sweep_dir, "hydra.sweep.dir")
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
