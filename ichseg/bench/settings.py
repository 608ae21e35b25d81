"""What `ichseg bench` runs: light to import, so `ichseg --help` does not load the benchmark."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ichseg.errors import IchsegError
from ichseg.launch.placement import usable_cores

SECTIONS = ("train", "epoch", "jobs", "prepare", "predict")
SCHEMA = "ichseg-bench/1"


@dataclass
class BenchSettings:
    """What `ichseg bench` runs; the defaults are the full measurement."""

    experiments: list[str] = field(default_factory=lambda: ["demo", "paper"])
    models: list[str] = field(default_factory=lambda: ["unet", "dunet"])
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    device: str = "auto"
    repeats: int = 3
    warmup_steps: int = 1
    warmup_s: float = 3.0
    window_s: float = 3.0
    # What a user would pick: four workers, or one per core on a smaller machine.
    monai_workers: int = field(default_factory=lambda: min(4, usable_cores()))
    jobs_per_device: list[int] = field(default_factory=lambda: [1, 2])
    jobs_experiment: str = "paper"
    jobs_model: str = "dunet"
    # Hydra overrides applied to every job config, e.g. ["data.batch_size=16"].
    overrides: list[str] = field(default_factory=list)
    # Options of the timed `ichseg predict`, e.g. ["--flip"] or ["--precision", "fp32"].
    predict_options: list[str] = field(default_factory=list)
    out_dir: str = "experiments/bench"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            raise IchsegError(f"--sections: unknown {unknown}; expected some of {SECTIONS}")
        if self.repeats < 1:
            raise IchsegError(f"--repeats {self.repeats}: expected at least 1")
        if any(n < 1 for n in self.jobs_per_device):
            raise IchsegError(f"--jobs-per-device {self.jobs_per_device}: expected counts >= 1")
        for option, value in (
            ("--warmup-steps", self.warmup_steps),
            ("--warmup-s", self.warmup_s),
            ("--window-s", self.window_s),
            ("--monai-workers", self.monai_workers),
        ):
            # Written so NaN fails too; inf would never end a window.
            if not 0 <= value < math.inf:
                raise IchsegError(f"{option} {value}: expected a finite number >= 0")

    def timing(self) -> dict:
        """Arguments of `StepWindows`."""
        return {
            "repeats": self.repeats,
            "warmup_steps": self.warmup_steps,
            "warmup_s": self.warmup_s,
            "window_s": self.window_s,
        }
