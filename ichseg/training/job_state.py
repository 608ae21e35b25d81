"""Whether a job folder may be continued by a config, and its `job.json` status while it trains.

One process at a time trains a job: it holds an exclusive `flock` on the folder's `job.lock`
for the job's lifetime (the operating system drops it when the process dies, however it dies)
and decides under that lock. A folder's `job.json` names the hash of the config that wrote it:
another config's run is refused, the same config's finished job is skipped and its interrupted
one resumes from `last.ckpt` once that checkpoint is known to hold the configured model.
`train.py` and the sweep's up-front check of every job folder both decide with these functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, ListConfig, OmegaConf

from ichseg.atomic import try_lock
from ichseg.checkpoint import HPARAMS_KEY, read_checkpoint
from ichseg.errors import IchsegError
from ichseg.records import write_job
from ichseg.training.callbacks import LAST_CHECKPOINT, CheckpointRecorder

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
)


JOB_LOCK = "job.lock"


class JobBusy(IchsegError):
    """Another live process holds the job folder's lock."""


@contextlib.contextmanager
def job_lock(job_dir: Path) -> Iterator[None]:
    """Hold `job_dir`'s exclusive lock for the block (its file names this process's id);
    JobBusy at once when another process holds it."""
    path = job_dir / JOB_LOCK
    fd = try_lock(path)
    if fd is None:
        try:
            holder = path.read_text(encoding="utf-8").strip()
        except OSError:
            holder = ""
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise JobBusy(
            f"{job_dir}: another process{pid} is training this job now (it holds "
            f"{JOB_LOCK}); wait for it to end or choose another folder"
        )
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


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


class RecordedRun:
    """`job.json` around one training: "running" on entry; on leaving "done", "failed" with the
    error, or "preempted" (SIGTERM) / "interrupted" (SIGINT) with the step reached, in which case
    the process exits like one killed by that signal (143, 130), so a scheduler requeues the job
    and nothing reads it as a finished sweep.

    Set `trainer` once it is built: its step and its `CheckpointRecorder` tell how it stopped.
    """

    def __init__(self, job_dir: Path, state: dict) -> None:
        self.job_dir = job_dir
        self.state = state
        self.trainer: pl.Trainer | None = None
        self._finished: dict = {}

    def finished(self, **fields) -> None:
        """Fields the "done" state adds (written when the block ends without an exception)."""
        self._finished = fields

    def __enter__(self) -> RecordedRun:
        write_job(self.job_dir, {**self.state, "status": "running"})
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            done = {**self.state, "status": "done", "finished": time.time(), **self._finished}
            write_job(self.job_dir, done)
            return
        # Lightning ends a Ctrl-C with sys.exit(1) after the recorder saw the KeyboardInterrupt.
        signame = self._stopped_by() or ("SIGINT" if isinstance(exc, KeyboardInterrupt) else None)
        if signame:
            raise self._stopped(signame) from None
        error = f"{type(exc).__name__}: {exc}"
        write_job(self.job_dir, {**self.state, "status": "failed", "error": error})

    def _stopped_by(self) -> str | None:
        callbacks = self.trainer.callbacks if self.trainer is not None else []
        recorders = [c for c in callbacks if isinstance(c, CheckpointRecorder)]
        return recorders[0].stopped_by if recorders else None

    def _stopped(self, signame: str) -> SystemExit:
        """Record a job stopped by `signame`; the exit status to leave with."""
        step = self.trainer.global_step if self.trainer is not None else 0
        status = "preempted" if signame == "SIGTERM" else "interrupted"
        write_job(self.job_dir, {**self.state, "status": status, "stopped_at_step": step})
        kept = f"{LAST_CHECKPOINT} saved" if step else "no step to save yet"
        print(
            f"train.py: {self.job_dir.name}: stopped by {signame} at step {step}, {kept}; "
            "run the same command to resume",
            file=sys.stderr,
        )
        return SystemExit(128 + getattr(signal, signame))
