"""A pool of N slots shared by the processes of a sweep, one job per slot.

A slot is an exclusive `flock` on `<pool>/slot-<i>.lock`, held for the whole job. The operating
system drops the lock when its holder exits, however it exits (exception, SIGKILL, OOM), so a
crashed job's slot comes back by itself, and jobs that finish out of order never hand one slot to
two jobs (which `job_num % n_slots` does as soon as durations differ).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

from ichseg.atomic import try_lock
from ichseg.errors import IchsegError


def slot_path(pool_dir: str | os.PathLike, index: int) -> Path:
    """The lock file of slot `index`."""
    return Path(pool_dir) / f"slot-{index}.lock"


def _wait_for_slot(
    pool: Path, n_slots: int, poll_s: float, timeout_s: float | None
) -> tuple[int, int]:
    """(index, descriptor) of the first slot that comes free; IchsegError after `timeout_s`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        for index in range(n_slots):
            fd = try_lock(slot_path(pool, index))
            if fd is not None:
                return index, fd
        if deadline is not None and time.monotonic() >= deadline:
            raise IchsegError(
                f"{pool}: all {n_slots} slots stayed busy for {timeout_s:g} s "
                f"(held by other jobs of this pool)"
            )
        # Jitter keeps waiting processes from polling in lockstep.
        time.sleep(poll_s * random.uniform(0.5, 1.5))


@contextlib.contextmanager
def acquire_slot(
    pool_dir: str | os.PathLike,
    n_slots: int,
    *,
    poll_s: float = 0.2,
    timeout_s: float | None = None,
) -> Iterator[int]:
    """Hold the first free slot of the pool (0..n_slots-1) for the block; yield its index.

    Waits, polling every `poll_s` seconds, while all slots are held; after `timeout_s` seconds
    (None: forever) raises IchsegError.
    """
    if n_slots < 1:
        raise IchsegError(f"{pool_dir}: a slot pool needs at least 1 slot, got {n_slots}")
    pool = Path(pool_dir)
    pool.mkdir(parents=True, exist_ok=True)
    index, fd = _wait_for_slot(pool, n_slots, poll_s, timeout_s)
    try:
        yield index
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
