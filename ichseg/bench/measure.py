"""Timing and memory primitives shared by every benchmark section.

A figure is the median of several timed repetitions after warm-up, kept with its spread
(min, max) and the repetitions themselves, so runs on different machines compare plainly.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def summarize(values: list[float]) -> dict:
    """Median, spread and the values themselves (empty input is an error, not a zero)."""
    if not values:
        raise ValueError("summarize: no repetitions were timed")
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": list(values),
    }


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MiB; None off Linux."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def vm_hwm_mb() -> float | None:
    """This process's peak resident set since exec or the last reset (Linux VmHWM), in MiB.

    Unlike `ru_maxrss`, which a child inherits across fork and exec from its parent, VmHWM
    belongs to the process's own address space.
    """
    return _status_mb("VmHWM")


def _reset_vm_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak RSS (MiB) and, on CUDA, peak allocated GPU memory from construction to each `read()`.

    `rss_scope` says what the RSS figure covers: "block" where the peak could be reset at
    construction, "process" (the peak since the process started) where it could not. The peak
    includes what the process held at construction (`rss_at_start_mb`): memory earlier sections
    freed may stay with the allocator.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.scoped = _reset_vm_hwm()
        self.start = _status_mb("VmRSS")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def read(self) -> dict:
        """The peaks so far."""
        out: dict = {}
        hwm, scoped = vm_hwm_mb(), self.scoped
        if hwm is None:
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            scoped = False
        out["peak_rss_mb"] = round(hwm, 1)
        out["rss_scope"] = "block" if scoped else "process"
        if self.start is not None:
            out["rss_at_start_mb"] = round(self.start, 1)
        if self.device.type == "cuda":
            out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return out


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Fill a dict with the block's `PeakMemory` figures when the block ends."""
    out: dict = {}
    watch = PeakMemory(device)
    try:
        yield out
    finally:
        out.update(watch.read())


def time_repeats(
    run: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> list[float]:
    """Seconds of each of `repeats` calls of `run` after `warmup` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


class StepWindows:
    """Images/s over windows of training steps, after a warm-up of steps and seconds.

    Warm-up lasts at least `warmup_steps` steps and `warmup_s` seconds (cuDNN autotuning,
    compilation, the first epoch's odd last batch); its last step's time then sets how many
    steps a window needs to last `window_s` seconds. `step_done(images)` is called after each
    step; it returns True once `repeats` windows are timed. Clocks are read only at window
    edges, after a device synchronisation, so the loop runs as it does in training.
    """

    def __init__(
        self,
        device: torch.device,
        repeats: int,
        warmup_steps: int = 1,
        warmup_s: float = 0.0,
        window_s: float = 0.0,
    ) -> None:
        if repeats < 1 or warmup_steps < 0:
            raise ValueError(f"repeats={repeats} must be >= 1, warmup_steps={warmup_steps} >= 0")
        self.device = device
        self.repeats = repeats
        self.warmup_steps = warmup_steps
        self.warmup_s = warmup_s
        self.window_s = window_s
        self.images_per_s: list[float] = []
        self.steps_per_window = 0
        self.warmup_done = 0
        self._steps = 0
        self._images = 0
        self._start = self._last = self._started = None

    def start(self) -> None:
        """Read the clock before the first step."""
        synchronize(self.device)
        self._started = self._last = time.perf_counter()

    @property
    def started(self) -> bool:
        """Whether `start()` was called."""
        return self._started is not None

    def resume(self) -> None:
        """Restart the open window's clock and counts, after work that is not to be timed."""
        synchronize(self.device)
        self._start = self._last = time.perf_counter()
        self._steps = self._images = 0

    def step_done(self, images: int) -> bool:
        """Account one finished step of `images` images; True when every window is timed."""
        if self.steps_per_window == 0:
            synchronize(self.device)
            now = time.perf_counter()
            step_s, self._last = now - self._last, now
            self.warmup_done += 1
            if self.warmup_done < self.warmup_steps or now - self._started < self.warmup_s:
                return False
            self.steps_per_window = max(1, round(self.window_s / max(step_s, 1e-9)))
            self._start, self._steps, self._images = now, 0, 0
            return False
        self._steps += 1
        self._images += images
        if self._steps < self.steps_per_window:
            return False
        synchronize(self.device)
        now = time.perf_counter()
        self.images_per_s.append(self._images / (now - self._start))
        self._start, self._steps, self._images = now, 0, 0
        return len(self.images_per_s) >= self.repeats


class LightningStepWindows(pl.Callback):
    """`StepWindows` driven by a Trainer: stops the fit once every window is timed."""

    def __init__(self, windows: StepWindows) -> None:
        self.windows = windows

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.windows.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.windows.step_done(int(batch["image"].shape[0])):
            trainer.should_stop = True
