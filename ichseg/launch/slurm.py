"""Waiting on a sweep's SLURM jobs, and one line for every job that did not finish.

hydra-submitit-launcher waits on the jobs in submission order and re-raises submitit's
multi-line error of the first failure (a scancel'd job: "has not produced any output", plus its
whole log). `wait_for_jobs` waits on all of them, logs each failure as it happens and ends the
sweep with one `LaunchError` line naming every failed job, its state and its log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from ichseg.launch import LaunchError

log = logging.getLogger(__name__)

# The line train.py prints for an IchsegError before exiting.
ERROR_PREFIX = "train.py: error: "


def check_time_limit(timeout_min: int, signal_delay_s: int) -> None:
    """Refuse a time limit that leaves no time to train before submitit's pre-timeout signal."""
    if timeout_min * 60 < signal_delay_s + 60:
        raise LaunchError(
            f"hydra.launcher.timeout_min={timeout_min} is too short: SLURM signals the job "
            f"signal_delay_s={signal_delay_s} s before its time limit to checkpoint and requeue "
            f"it, so timeout_min must be at least {(signal_delay_s + 60 + 59) // 60}"
        )


def _log_error_line(path: Path) -> str:
    """The last `train.py: error:` line of a job's stderr log ('' when there is none)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [ln.strip() for ln in lines if ln.startswith(ERROR_PREFIX)]
    return errors[-1][len(ERROR_PREFIX) :] if errors else ""


def _trace_last_line(message: str) -> str:
    """The exception line at the end of the traceback inside a submitit FailedJobError."""
    parts = message.split("-" * 22)
    trace = parts[1] if len(parts) >= 3 else message
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip()]
    return lines[-1] if lines else "failed"


def job_outcome(job: Any) -> tuple[JobReturn | None, str]:
    """The finished submitit `job`'s JobReturn and, when it failed, why (else '')."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        ret = job.results()[0]
    except FailedJobError as exc:  # raised in the job, outside the task (a subclass of the next)
        return None, _trace_last_line(str(exc))
    except UncompletedJobError:  # killed, cancelled, out of memory: no result at all
        detail = _log_error_line(Path(job.paths.stderr))
        why = f"ended {job.state} with no result"
        return None, f"{why} ({detail})" if detail else why
    if ret.status == JobStatus.FAILED:
        exc = ret._return_value
        first = str(exc).splitlines()[0] if str(exc) else ""
        return ret, f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return ret, ""


def wait_for_jobs(
    jobs: Sequence[Any], names: Sequence[str], sweep_dir: str, poll_s: float = 1.0
) -> list[JobReturn]:
    """Wait until every job has ended; LaunchError naming each failed one, else their results."""
    results: list[JobReturn | None] = [None] * len(jobs)
    failures: list[str] = []
    pending = list(range(len(jobs)))
    while pending:
        for i in [i for i in pending if jobs[i].done()]:
            pending.remove(i)
            results[i], why = job_outcome(jobs[i])
            if why:
                failure = f"job {jobs[i].job_id} ({names[i]}) {why}, log {jobs[i].paths.stderr}"
                log.error("SLURM %s", failure)
                failures.append(failure)
        if pending:
            time.sleep(poll_s)
    if failures:
        others = len(jobs) - len(failures)
        raise LaunchError(
            f"{len(failures)} of {len(jobs)} SLURM jobs failed: {'; '.join(failures)}; "
            + (f"the other {others} finished; " if others else "")
            + f"to resume, run the same command with hydra.sweep.dir={sweep_dir}"
        )
    return [r for r in results if r is not None]
