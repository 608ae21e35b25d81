"""One sweep job: skip it if done, resume it if interrupted, otherwise train it from scratch."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import signal
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from ichseg.atomic import atomic_write_text
from ichseg.config import instantiate_checked
from ichseg.config_schema import validate
from ichseg.errors import IchsegError
from ichseg.launch.placement import trainer_overrides
from ichseg.runtime import apply_torch_settings, training_precision
from ichseg.training.callbacks import (
    LAST_CHECKPOINT,
    CheckpointRecorder,
    FiniteLossGuard,
    SplitProvenance,
)
from ichseg.training.console import EpochLine, quiet_libraries
from ichseg.training.provenance import code_version, hardware, package_versions, project_root
from ichseg.training.records import read_job, read_records, write_job

log = logging.getLogger(__name__)

# Config parts that change results; paths, loggers and launchers do not.
RESULT_KEYS = (
    "model",
    "data",
    "trainer",
    "seed",
    "fold",
    "checkpoint_every",
    "precision",
    "float32_matmul_precision",
    "flush_denormal",
)
# Keys inside those parts that set where files live or only how fast a job runs: a job may
# change them and still resume.
IGNORED_KEYS = (
    "data.root",
    "data.cache_root",
    "data.phantom.root",
    "data.resident",
    "model.module.compile",
)


def config_hash(cfg: DictConfig) -> str:
    """Short hash of everything that determines a job's results (not paths or speed settings)."""
    # Only these parts are resolved: the rest (output paths) may need Hydra's runtime state.
    parts = {key: _resolved(cfg, key) for key in RESULT_KEYS}
    for key in IGNORED_KEYS:
        *parents, leaf = key.split(".")
        node = parts
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _resolved(cfg: DictConfig, key: str) -> object:
    """The top-level `key` of `cfg` as plain, resolved Python values (None when absent)."""
    value = cfg.get(key)
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


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


def check_resume_checkpoint(path: Path, module_cfg: DictConfig) -> None:
    """Raise unless the checkpoint to resume from was saved with the configured model settings."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IchsegError(
            f"{path}: cannot read the checkpoint to resume from ({detail}); delete it to "
            "train the job from scratch"
        ) from None
    saved = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict):
        raise IchsegError(
            f"{path}: not a checkpoint of this training (no hyper_parameters); delete it to "
            "train the job from scratch"
        )
    wanted = OmegaConf.to_container(module_cfg, resolve=True)
    differ = [
        f"{key} {_plain(saved[key])} != {_plain(value)}"
        for key, value in wanted.items()
        if key in saved
        and f"model.module.{key}" not in IGNORED_KEYS
        and _plain(saved[key]) != _plain(value)
    ]
    if differ:
        raise IchsegError(
            f"{path}: saved by another model configuration (model.module {'; '.join(differ)}, "
            "checkpoint != config); choose another hydra.sweep.dir or delete this job folder"
        )


def _plain(value: object) -> object:
    """Lists for tuples and OmegaConf containers, so saved and configured values compare."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def check_training_length(trainer_cfg: DictConfig) -> None:
    """Refuse a training that would record nothing (0 epochs) or never end (-1, unbounded)."""
    epochs = trainer_cfg.get("max_epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise IchsegError(
            f"trainer.max_epochs={epochs}: expected a positive integer (the job records a "
            "checkpoint at its last epoch; 0 records nothing and -1 never ends)"
        )
    steps = trainer_cfg.get("max_steps", -1)
    if isinstance(steps, bool) or not isinstance(steps, int) or (steps < 1 and steps != -1):
        raise IchsegError(
            f"trainer.max_steps={steps}: expected -1 (no limit) or a positive integer"
        )


def _stopped(job_dir: Path, state: dict, signame: str, step: int) -> SystemExit:
    """Record a job stopped by SIGTERM (pre-emption) or SIGINT (Ctrl-C); its exit status."""
    status = "preempted" if signame == "SIGTERM" else "interrupted"
    write_job(job_dir, {**state, "status": status, "stopped_at_step": step})
    kept = f"{LAST_CHECKPOINT} saved" if step else "no step to save yet"
    print(
        f"train.py: {job_dir.name}: stopped by {signame} at step {step}, {kept}; "
        "run the same command to resume",
        file=sys.stderr,
    )
    # Exit like a process killed by the signal (143, 130), so a scheduler requeues the job and
    # nothing reads this as a finished sweep.
    return SystemExit(128 + getattr(signal, signame))


def run_job(cfg: DictConfig) -> float | None:
    """Train `cfg.model` on `cfg.fold`, writing checkpoints, records and job state to its folder."""
    if OmegaConf.is_missing(cfg.data, "root"):
        raise IchsegError("data.root is required with data=physionet: data.root=/path/to/release")
    validate(cfg)
    check_training_length(cfg.trainer)
    job_dir = Path(cfg.paths.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    digest = config_hash(cfg)
    state = read_job(job_dir)
    if state is not None and state.get("config_hash") != digest:
        raise IchsegError(
            f"{job_dir}: holds results of another configuration (config hash "
            f"{state.get('config_hash')}, this run {digest}); choose another hydra.sweep.dir"
        )
    if state is not None and state.get("status") == "done":
        log.info("%s: already finished, skipped", job_dir.name)
        return last_val_dice(job_dir)

    resume = job_dir / LAST_CHECKPOINT
    ckpt_path = str(resume) if resume.exists() else None
    if ckpt_path:
        # Before anything is written: a refused folder keeps its files as they were.
        check_resume_checkpoint(resume, cfg.model.module)
        log.info("%s: resuming from %s", job_dir.name, resume)

    apply_torch_settings(cfg)
    quiet_libraries()
    atomic_write_text(job_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate_checked(cfg.data)
    module = instantiate_checked(cfg.model.module)
    recorder = CheckpointRecorder(
        job_dir,
        model_name=cfg.model.name,
        fold=cfg.fold,
        every_n_epochs=cfg.checkpoint_every,
        overlay_count=cfg.overlay_count,
        last_every_s=cfg.last_checkpoint_every_s,
    )
    state = {
        "model": cfg.model.name,
        "fold": cfg.fold,
        "seed": cfg.seed,
        "experiment": cfg.experiment_name,
        "config_hash": digest,
        "status": "running",
        "started": (state or {}).get("started", time.time()),
        "resumed_from": ckpt_path,
        "code_version": code_version(project_root()),
        "packages": package_versions(),
        "hardware": hardware(),
    }
    write_job(job_dir, state)
    trainer = None
    try:
        placement = trainer_overrides()
        accelerator = placement.get("accelerator", cfg.trainer.get("accelerator", "auto"))
        trainer = instantiate(
            cfg.trainer,
            # The guard first: a diverged epoch stops the job before the recorder writes it.
            callbacks=[
                FiniteLossGuard(),
                SplitProvenance(),
                recorder,
                EpochLine(f"{cfg.model.name}-fold{cfg.fold}"),
            ],
            logger=build_loggers(cfg, sweep_group(cfg)) or False,
            precision=training_precision(cfg.precision, str(accelerator)),
            deterministic=cfg.deterministic,
            benchmark=not cfg.deterministic,
            default_root_dir=str(job_dir),
            **placement,
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except BaseException as exc:
        # Lightning ends a Ctrl-C with sys.exit(1) after the recorder saw the KeyboardInterrupt.
        signame = recorder.stopped_by or ("SIGINT" if isinstance(exc, KeyboardInterrupt) else None)
        if signame:
            step = trainer.global_step if trainer is not None else 0
            raise _stopped(job_dir, state, signame, step) from None
        write_job(job_dir, {**state, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        finish_wandb()
    state.update(status="done", finished=time.time(), cache_dir=str(datamodule.cache_dir))
    write_job(job_dir, state)
    name = f"{cfg.model.name}-fold{cfg.fold}"
    log.info("%s: done, %s; results in %s", name, closing_figures(job_dir), job_dir)
    return last_val_dice(job_dir)


def closing_figures(job_dir: Path) -> str:
    """The last record's epoch and validation Dice under every protocol, for the closing line."""
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
    return f"epoch {records[-1]['epoch']}: val {dice}"
