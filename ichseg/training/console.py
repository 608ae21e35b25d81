"""What a job says on the terminal and in its train.log: one line per epoch and one at the end."""

from __future__ import annotations

import logging
import re
import time
import warnings

import pytorch_lightning as pl

from ichseg.metrics import COLLAPSED, collapsed

log = logging.getLogger("ichseg")

# Library loggers whose INFO lines (device summaries, product tips) are noise for a job; their
# warnings and errors still show.
CHATTY_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)

# Library warnings that say nothing about a job, as (category, exact start of the message); no
# argument silences them where they are raised. Lightning's advice to prepend `srun` when SLURM is
# installed (each job is one process, started by sbatch or by hand), and torch's deprecation of
# the `LeafSpec` class Lightning's own pytree helper still builds. Every other warning shows.
LIBRARY_NOISE = (
    (UserWarning, "The `srun` command is available on your system but is not used."),
    (FutureWarning, "`isinstance(treespec, LeafSpec)` is deprecated"),
)


def quiet_libraries() -> None:
    """Raise the chatty library loggers to WARNING and ignore exactly `LIBRARY_NOISE`."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for category, message in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)


def metrics_text(metrics: dict, prefix: str) -> str:
    """'loss 0.512, dice_paper 0.62, ...': every Dice and the loss under `prefix`, as logged."""
    parts = []
    for key, value in sorted(metrics.items()):
        name = key.removeprefix(prefix)
        if key.startswith(prefix) and (name == "loss" or name.startswith("dice_")):
            parts.append(f"{name} {float(value):.3f}")
    return ", ".join(parts)


class EpochLine(pl.Callback):
    """Log one line per finished epoch: epoch n/N, train and validation figures, seconds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        val = (getattr(pl_module, "epoch_metrics", None) or {}).get("val", {})
        log.info(
            "%s: epoch %d/%d: train %s; val %s (%.1f s)%s",
            self.name,
            trainer.current_epoch + 1,
            trainer.max_epochs,
            metrics_text(metrics, "train/") or "-",
            metrics_text(metrics, "val/") or "-",
            time.perf_counter() - self.started,
            f"; collapsed: {COLLAPSED}" if collapsed(val) else "",
        )
