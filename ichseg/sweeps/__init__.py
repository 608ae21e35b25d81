"""Where a sweep's records are read from: the sweep folder, the W&B API or W&B offline run files.

`read_sweep` is the one entry point; each source builds the same `Job`s (`model.py`), so the
report does not depend on where the records came from.
"""

from __future__ import annotations

from pathlib import Path

from ichseg.errors import IchsegError
from ichseg.sweeps.local import collect_sweep
from ichseg.sweeps.model import Sweep
from ichseg.sweeps.wandb_api import collect_wandb
from ichseg.sweeps.wandb_offline import collect_wandb_offline

SOURCES = ("local", "wandb", "wandb-offline")
# Only the sweep folder holds checkpoint files, which scoring the held-out test split needs.
WITH_CHECKPOINTS = ("local",)


def read_sweep(
    source: str,
    sweep_dir: str | Path | None = None,
    project: str | None = None,
    group: str | None = None,
) -> Sweep:
    """The sweep from `source`: `local` reads the folder `sweep_dir`, `wandb-offline` its jobs'
    W&B offline run files, `wandb` the runs of W&B `project` ("entity/project") in `group`."""
    if source == "wandb":
        if not project or not group:
            raise IchsegError("the wandb source needs a project (entity/project) and a group")
        return collect_wandb(project, group)
    if source not in SOURCES:
        raise IchsegError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    if sweep_dir is None:
        raise IchsegError(f"the {source} source needs a sweep folder")
    return collect_sweep(sweep_dir) if source == "local" else collect_wandb_offline(sweep_dir)
