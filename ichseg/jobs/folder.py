"""Who may write a job folder: one process at a time, and a refused single run leaves nothing.

One process trains a job: it holds an exclusive `flock` on the folder's `job.lock` for the
job's lifetime (the operating system drops it when the process dies, however it dies) and
decides under that lock, with `ichseg.jobs.config`, whether the folder's job is skipped,
resumed or refused. A single run's config is checked before Hydra creates its folder
(`CheckBeforeRunFolder`); what the job refuses later is discarded with the folder. Nothing here
loads Lightning, so a refused run answers at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ichseg.atomic import try_lock
from ichseg.config_schema import validate
from ichseg.errors import IchsegError
from ichseg.jobs.records import RECORDS_FILE

JOB_LOCK = "job.lock"

# What Hydra writes into a single run's folder before the job starts.
HYDRA_FILES = {".hydra", "train.log"}


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


def holds_only_hydra_files(run_dir: Path) -> bool:
    """Whether `run_dir` holds nothing yet but what Hydra wrote before the job started."""
    return run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= HYDRA_FILES


def discard_refused_run(run_dir: Path) -> None:
    """Remove the folder of a single run that was refused before it recorded anything: its
    Hydra files, lock and failed job state would only look like a run. Kept when it holds a
    checkpoint or a record."""
    if (run_dir / RECORDS_FILE).exists() or any(run_dir.glob("checkpoints/*.ckpt")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        run_dir.parent.rmdir()  # experiments/runs/ itself, when this run created it


class CheckBeforeRunFolder(Callback):
    """`hydra.callbacks`: a single run whose config `validate` refuses stops with train.py's one
    line before Hydra creates the run folder (`hydra.run.dir`), so it leaves nothing behind."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            validate(config)
        except IchsegError as exc:
            print(f"train.py: error: {exc}", file=sys.stderr)
            sys.exit(2)
