"""The slot pool behind `hydra/launcher=gpus`: real processes, random durations, a SIGKILL."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ichseg.errors import IchsegError
from ichseg.launch.slots import acquire_slot

# One job: hold a slot for a random time, then record when it held which slot.
JOB = """
import json, random, sys, time
from ichseg.launch.slots import acquire_slot
pool, n_slots, out, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
random.seed(seed)
with acquire_slot(pool, n_slots, poll_s=0.02) as slot:
    start = time.monotonic()
    time.sleep(random.uniform(0.05, 0.6))
    end = time.monotonic()
with open(out, "w") as fh:
    json.dump({"slot": slot, "start": start, "end": end}, fh)
"""

# Holds slot 0 of a one-slot pool, says so, then waits to be killed.
HOLDER = """
import sys, time
from pathlib import Path
from ichseg.launch.slots import acquire_slot
with acquire_slot(sys.argv[1], 1) as slot:
    Path(sys.argv[2]).write_text(str(slot))
    time.sleep(120)
"""


def overlapping(intervals: list[dict]) -> list[tuple[dict, dict]]:
    """Pairs of intervals on the same slot that overlap in time."""
    clashes = []
    for slot in {i["slot"] for i in intervals}:
        held = sorted((i for i in intervals if i["slot"] == slot), key=lambda i: i["start"])
        clashes += [(a, b) for a, b in itertools.pairwise(held) if b["start"] < a["end"]]
    return clashes


def max_concurrent(intervals: list[dict]) -> int:
    """The largest number of intervals open at one instant."""
    events = sorted([(i["start"], 1) for i in intervals] + [(i["end"], -1) for i in intervals])
    running = peak = 0
    for _, step in events:  # at equal times the end (-1) sorts first
        running += step
        peak = max(peak, running)
    return peak


def test_modulo_assignment_collides_and_the_checks_see_it():
    """What the pool prevents: slot = job number % 3, three workers, one long first job."""
    durations = [5.0] + [1.0] * 5
    free_at = [0.0, 0.0, 0.0]
    intervals = []
    for num, duration in enumerate(durations):
        worker = min(range(3), key=lambda w: free_at[w])  # the worker that frees up first
        start = free_at[worker]
        free_at[worker] = start + duration
        intervals.append({"slot": num % 3, "start": start, "end": start + duration})
    assert overlapping(intervals)  # job 3 lands on slot 0 while job 0 still runs there
    assert max_concurrent(intervals) == 3


def test_more_jobs_than_slots_never_share_one(tmp_path):
    """12 processes start at once on 3 slots; each holds its slot for a random time."""
    pool, n_slots, n_jobs = tmp_path / "pool", 3, 12
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                JOB,
                str(pool),
                str(n_slots),
                str(tmp_path / f"{i}.json"),
                str(i),
            ]
        )
        for i in range(n_jobs)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    intervals = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(n_jobs)]
    assert {i["slot"] for i in intervals} == set(range(n_slots))
    assert overlapping(intervals) == []
    # Saturated, never oversubscribed: 12 jobs queue behind 3 slots.
    assert max_concurrent(intervals) == n_slots


def test_a_killed_holder_gives_its_slot_back(tmp_path):
    pool, ready = tmp_path / "pool", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(pool), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with (
            pytest.raises(IchsegError, match="all 1 slots stayed busy"),
            acquire_slot(pool, 1, timeout_s=0.5),
        ):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        with acquire_slot(pool, 1, timeout_s=10) as slot:
            assert slot == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_an_exception_in_the_job_releases_its_slot(tmp_path):
    with pytest.raises(RuntimeError), acquire_slot(tmp_path, 1):
        raise RuntimeError("job crashed")
    with acquire_slot(tmp_path, 2, timeout_s=1) as first, acquire_slot(tmp_path, 2) as second:
        assert (first, second) == (0, 1)


def test_a_pool_needs_a_slot(tmp_path):
    with pytest.raises(IchsegError, match="at least 1 slot"), acquire_slot(tmp_path, 0):
        pass
