"""The configs a benchmark runs: the same Hydra composition `train.py` makes for a job."""

from __future__ import annotations

import logging
import os
import warnings

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from ichseg.config import project_root, register_resolvers
from ichseg.errors import IchsegError
from ichseg.launch.overrides import check_overrides
from ichseg.runtime import pick_device, training_precision
from ichseg.training.console import quiet_libraries


def compose_job(experiment: str, model: str, overrides: list[str] | tuple = ()) -> DictConfig:
    """The composed config of `train.py experiment=<experiment> model=<model> <overrides>`."""
    register_resolvers()
    root = project_root()
    os.environ.setdefault("ICHSEG_ROOT", str(root))
    conf = root / "conf"
    if not (conf / "train.yaml").is_file():
        raise IchsegError(f"{conf}: no train.yaml; run `ichseg bench` from an ichseg checkout")
    args = [f"experiment={experiment}", f"model={model}", "logger=none", *overrides]
    # The checks train.py makes (unknown or renamed keys, unknown models), which also compose it.
    try:
        check_overrides(args, conf)
    except IchsegError as err:
        raise IchsegError(f"bench job config ({' '.join(args)}): {err}") from None
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose("train", overrides=args)


def bench_device(name: str) -> torch.device:
    """'auto' (CUDA when present), 'cpu' or 'cuda'; one line when CUDA is asked for but absent."""
    if name not in ("auto", "cpu", "cuda"):
        raise IchsegError(f"--device {name}: expected auto, cpu or cuda")
    return pick_device(name)


def job_precision(cfg: DictConfig, device: torch.device) -> str:
    """The Lightning precision a job of `cfg` trains with on `device`."""
    return training_precision(cfg.precision, device.type)


def bench_trainer(
    cfg: DictConfig, device: torch.device, callbacks: list, **overrides
) -> pl.Trainer:
    """A Trainer built from the job's `trainer` config, without loggers, bars or summaries."""
    settings = {
        "accelerator": device.type,
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "precision": job_precision(cfg, device),
        "deterministic": bool(cfg.deterministic),
        "benchmark": not cfg.deterministic,
        "callbacks": callbacks,
        **overrides,
    }
    return instantiate(cfg.trainer, **settings)


def quiet_lightning() -> None:
    """A job's filters (`quiet_libraries`), plus Lightning's start-up banners and the advice the
    benchmark's deliberately short fits draw, kept out of its output."""
    quiet_libraries()
    for name in ("pytorch_lightning", "lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for noise in (
        ".*does not have many workers.*",
        ".*weights_only.*",
        ".*limit_train_batches=1.*",
        ".*no `val_dataloader`.*",
    ):
        warnings.filterwarnings("ignore", message=noise)
