"""One job's `job.json` status while it trains (its folder's lock: `ichseg.jobs.folder`)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytorch_lightning as pl

from ichseg.checkpoint import LAST_CHECKPOINT
from ichseg.jobs.records import write_job


class RecordedRun:
    """`job.json` around one training: "running" on entry; on leaving "done", "failed" with the
    error, or "preempted" (SIGTERM) / "interrupted" (SIGINT) with the step reached, in which case
    the process exits like one killed by that signal (143, 130), so a scheduler requeues the job
    and nothing reads it as a finished sweep.

    Set `trainer` once it is built: its step, and the `stopped_by` of its callback that records
    signals (`ichseg.training.callbacks.CheckpointRecorder`), tell how it stopped.
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
        return next((c.stopped_by for c in callbacks if hasattr(c, "stopped_by")), None)

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
