"""One job's hold on its folder and its `job.json` status while it trains.

One process at a time trains a job: it holds an exclusive `flock` on the folder's `job.lock`
for the job's lifetime (the operating system drops it when the process dies, however it dies)
and decides under that lock, with `ichseg.job_config`, whether the folder's job is skipped,
resumed or refused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl

from ichseg.atomic import try_lock
from ichseg.checkpoint import LAST_CHECKPOINT
from ichseg.errors import IchsegError
from ichseg.records import write_job
from ichseg.training.callbacks import CheckpointRecorder

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
