"""One sweep job: skip it if done, resume it if interrupted, otherwise train it from scratch."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ichseg.atomic import atomic_write_text
from ichseg.config import instantiate_checked, project_root
from ichseg.errors import IchsegError
from ichseg.jobs.config import config_clash, config_hash, resume_checkpoint
from ichseg.jobs.folder import job_lock
from ichseg.jobs.records import read_job, read_records
from ichseg.jobs.state import RecordedRun
from ichseg.launch.placement import trainer_overrides
from ichseg.metrics import COLLAPSED, collapsed
from ichseg.paths import absolute_config_paths
from ichseg.runtime import apply_torch_settings, training_precision
from ichseg.training.console import quiet_libraries
from ichseg.training.provenance import code_version, hardware, package_versions

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig) -> float | None:
    """Train `cfg.model` on `cfg.fold` (a config `config_schema.validate` passed), writing
    checkpoints, records and job state to its folder."""
    job_dir = Path(cfg.paths.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    with job_lock(job_dir):
        state = read_job(job_dir)
        clash = config_clash(state, cfg)
        if clash:
            raise IchsegError(
                f"{job_dir}: holds results of another configuration ({clash}); "
                "choose another hydra.sweep.dir"
            )
        if state is not None and state.get("status") == "done":
            log.info("%s: already finished, skipped", job_dir.name)
            return last_val_dice(job_dir)
        # Before anything is written: a refused folder keeps its files as they were.
        resume = resume_checkpoint(job_dir, state, cfg.model.module)
        if resume:
            log.info("%s: resuming from %s", job_dir.name, resume)
        started = (state or {}).get("started", time.time())
        train(cfg, job_dir, started=started, resume=resume)
    name = f"{cfg.model.name}-fold{cfg.fold}"
    log.info("%s: done, %s; results in %s", name, closing_figures(job_dir), job_dir)
    return last_val_dice(job_dir)


def train(cfg: DictConfig, job_dir: Path, started: float, resume: Path | None) -> None:
    """Fit the configured model on the configured fold in `job_dir`, resuming from `resume`."""
    apply_torch_settings(cfg)
    quiet_libraries()
    # The config is read later from anywhere (the report): its folders are recorded absolute.
    absolute_config_paths(cfg)
    atomic_write_text(job_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate_checked(cfg.data)
    module = instantiate_checked(cfg.model.module)
    callbacks = [instantiate_checked(node) for node in (cfg.get("callbacks") or {}).values()]
    state = {
        "model": cfg.model.name,
        "fold": cfg.fold,
        "seed": cfg.seed,
        "experiment": cfg.experiment_name,
        "config_hash": config_hash(cfg),
        "started": started,
        "resumed_from": str(resume) if resume else None,
        "code_version": code_version(project_root()),
        "packages": package_versions(),
        "hardware": hardware(),
    }
    with RecordedRun(job_dir, state) as run:
        try:
            placement = trainer_overrides()
            accelerator = placement.get("accelerator", cfg.trainer.get("accelerator", "auto"))
            run.trainer = trainer = instantiate(
                cfg.trainer,
                callbacks=callbacks,
                logger=build_loggers(cfg, sweep_group(cfg)) or False,
                precision=training_precision(cfg.precision, str(accelerator)),
                deterministic=cfg.deterministic,
                benchmark=not cfg.deterministic,
                default_root_dir=str(job_dir),
                **placement,
            )
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
        finally:
            finish_wandb()
        run.finished(cache_dir=str(datamodule.cache_dir))


def sweep_group(cfg: DictConfig) -> str:
    """The W&B group of this job: the sweep folder's name, or 'single' outside a multirun."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"{cfg.experiment_name}/{Path(hydra_cfg.sweep.dir).name}"
    return f"{cfg.experiment_name}/single"


def build_loggers(cfg: DictConfig, group: str) -> list:
    """Instantiate every configured logger; W&B gets the sweep group and the whole config."""
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if name == "wandb":
            logger = instantiate(logger_cfg, group=group)
            # Lightning always passes anonymous=None, which current wandb answers with a
            # deprecation warning on every job; leaving it out changes nothing else.
            if getattr(logger, "_wandb_init", {}).get("anonymous", 0) is None:
                del logger._wandb_init["anonymous"]
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        else:
            logger = instantiate(logger_cfg)
        loggers.append(logger)
    return loggers


def finish_wandb() -> None:
    """Close the W&B run, if any: without this every later multirun job logs into the first."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def last_val_dice(job_dir: Path) -> float | None:
    """Validation Dice (paper protocol) of the job's last record: the sweep's return value."""
    records = read_records(job_dir)
    return records[-1]["val"].get("dice_paper") if records else None


def closing_figures(job_dir: Path) -> str:
    """The last record's epoch and validation Dice under every protocol, for the closing line,
    and whether its network collapsed."""
    records = read_records(job_dir)
    if not records:
        return "no records"
    val = records[-1]["val"]
    # An undefined metric (e.g. onebatch on a fold smaller than one batch) is null in records.
    dice = ", ".join(
        f"{k} {'NA' if v is None else format(v, '.3f')}"
        for k, v in sorted(val.items())
        if k.startswith("dice_")
    )
    warning = f"; collapsed: {COLLAPSED}" if collapsed(val) else ""
    return f"epoch {records[-1]['epoch']}: val {dice}{warning}"
