"""Whether a job folder may be continued by a config: the config hash every job records, and the
checkpoint an interrupted job resumes from.

A folder's `job.json` names the hash of the config that wrote it: another config's run is
refused, the same config's finished job is skipped and its interrupted one resumes from
`last.ckpt` once that checkpoint is known to hold the configured model. A job (`train.py`) and
the sweep's up-front check of every job folder (`ichseg.launch.sweep`) both decide with these
functions, so they live below both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from ichseg.checkpoint import (
    CHECKPOINT_VERSION,
    HPARAMS_KEY,
    LAST_CHECKPOINT,
    VERSION_KEY,
    read_checkpoint,
)
from ichseg.errors import IchsegError

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
    "data.source.root",
    "data.cache_root",
    "data.resident",
    "data.allow_non_hu",
    "model.module.compile",
    # How the report names, orders and describes a network; its results do not depend on them.
    "model.display_name",
    "model.order",
    "model.architecture",
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


def config_clash(state: dict | None, cfg: DictConfig) -> str | None:
    """'config hash X, this run Y' when `state` was written by another config, else None."""
    if state is None:
        return None
    digest = config_hash(cfg)
    found = state.get("config_hash")
    return None if found == digest else f"config hash {found}, this run {digest}"


def resume_checkpoint(job_dir: Path, state: dict | None, module_cfg: DictConfig) -> Path | None:
    """The unfinished job's `last.ckpt`, checked against `module_cfg`; None when there is none."""
    path = job_dir / LAST_CHECKPOINT
    if (state is not None and state.get("status") == "done") or not path.exists():
        return None
    check_resume_checkpoint(path, module_cfg)
    return path


def check_resume_checkpoint(path: Path, module_cfg: DictConfig) -> None:
    """Raise unless the checkpoint to resume from was saved with the configured model settings."""
    checkpoint = read_checkpoint(
        path,
        unreadable="{path}: cannot read the checkpoint to resume from ({reason}); delete it to "
        "train the job from scratch",
    )
    saved = checkpoint.get(HPARAMS_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict):
        raise IchsegError(
            f"{path}: not a checkpoint of this training (no hyper_parameters); delete it to "
            "train the job from scratch"
        )
    version = checkpoint.get(VERSION_KEY, 1)
    if version != CHECKPOINT_VERSION:
        raise IchsegError(
            f"{path}: a checkpoint of version {version}, this ichseg resumes version "
            f"{CHECKPOINT_VERSION}; delete it to train the job from scratch"
        )
    saved = _flat(saved)
    wanted = _flat(OmegaConf.to_container(module_cfg, resolve=True))
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


def _flat(node: dict, prefix: str = "") -> dict:
    """Nested settings as one level of dotted keys (`net.filters`), so a difference is named
    by the setting that differs."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict | DictConfig):
            out.update(_flat(dict(value), f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _plain(value: object) -> object:
    """Lists for tuples and OmegaConf containers, so saved and configured values compare."""
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
