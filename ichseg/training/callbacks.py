"""Checkpoint records: every N epochs a checkpoint plus one metrics row, the stuff of Table 1."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ichseg.atomic import atomic_path
from ichseg.checkpoint import LAST_CHECKPOINT, SPLIT_KEY, VALIDATION_KEY, split_provenance
from ichseg.config_schema import check_keys
from ichseg.errors import IchsegError
from ichseg.jobs.records import read_records, upsert_history, upsert_record
from ichseg.metrics import METRICS_VERSION, collapsed
from ichseg.visualize import overlay_rgb


def checkpoint_name(epoch: int) -> str:
    """Relative path of the checkpoint written after `epoch` epochs (1-based)."""
    return f"checkpoints/epoch={epoch:04d}.ckpt"


def save_checkpoint_atomically(trainer: pl.Trainer, path: Path) -> None:
    """Save a full training checkpoint through a temporary file, so a crash never leaves half."""
    with atomic_path(path) as tmp:
        # Full (optimizer, loops, callbacks), as a resume needs; said so Lightning need not.
        trainer.save_checkpoint(tmp, weights_only=False)


def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


class CheckpointRecorder(pl.Callback):
    """After each validation: a history row; every `every_n_epochs` (and at the last epoch) a
    checkpoint and a record row; then `last.ckpt` for resuming, at those epochs and whenever
    `last_every_s` seconds have passed since it was last written (0: after every epoch).

    A paper-width U-Net checkpoint with its Adam state is 373 MB, which takes longer to write
    than a GPU takes to train an epoch, so `last.ckpt` follows the clock rather than the epochs.
    A SIGTERM (pre-emption) still writes it at once; a SIGKILL loses at most `last_every_s`.

    Epochs are counted from 1, as in the paper ("checkpoints every 100 epochs").
    Files are written in the order checkpoint -> record -> last.ckpt, so a crash at any point
    leaves records that a resumed run rewrites (records are keyed by epoch), never duplicates.
    """

    def __init__(
        self,
        job_dir: str | os.PathLike,
        model_name: str,
        fold: int,
        every_n_epochs: int = 100,
        save_last: bool = True,
        overlay_count: int = 4,
        last_every_s: float = 0.0,
    ) -> None:
        check_keys({"checkpoint_every": every_n_epochs, "last_checkpoint_every_s": last_every_s})
        self.job_dir = Path(job_dir)
        self.model_name = model_name
        self.fold = fold
        self.every_n_epochs = every_n_epochs
        self.save_last = save_last
        self.overlay_count = overlay_count
        self.last_every_s = float(last_every_s)
        self._last_saved = time.monotonic()
        # "SIGTERM" or "SIGINT" once training was stopped by that signal (see on_exception).
        self.stopped_by: str | None = None
        # The epoch (1-based) whose validation ran last; 0 before the first.
        self._validated_epoch = 0

    def is_checkpoint_epoch(self, epoch: int, max_epochs: int) -> bool:
        """Whether `epoch` (1-based) gets a checkpoint and a record."""
        return epoch % self.every_n_epochs == 0 or epoch == max_epochs

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._last_saved = time.monotonic()
        for logger in _wandb_loggers(trainer):
            run = logger.experiment
            # Curves against epochs, and checkpoint metrics against the checkpoint epoch, so a
            # dashboard can line up the same checkpoint across folds and architectures.
            run.define_metric("epoch")
            run.define_metric("train/*", step_metric="epoch")
            run.define_metric("val/*", step_metric="epoch")
            run.define_metric("checkpoint/epoch")
            run.define_metric("checkpoint/*", step_metric="checkpoint/epoch")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not getattr(pl_module, "epoch_metrics", None):
            return
        epoch = self._validated_epoch = trainer.current_epoch + 1
        metrics = pl_module.epoch_metrics
        row = {"epoch": epoch}
        for stage, values in metrics.items():
            row.update({f"{stage}/{k}": v for k, v in values.items()})
        upsert_history(self.job_dir, row)
        checkpoint_epoch = self.is_checkpoint_epoch(epoch, trainer.max_epochs)
        if checkpoint_epoch:
            name = checkpoint_name(epoch)
            save_checkpoint_atomically(trainer, self.job_dir / name)
            record = {
                "model": self.model_name,
                "fold": self.fold,
                "epoch": epoch,
                "checkpoint": name,
                "metrics_version": METRICS_VERSION,
                "train": metrics["train"],
                "val": metrics["val"],
                "collapsed": collapsed(metrics["val"]),
            }
            upsert_record(self.job_dir, record)
            self._log_to_wandb(trainer, pl_module, record)
        due = time.monotonic() - self._last_saved >= self.last_every_s
        if self.save_last and (checkpoint_epoch or due):
            save_checkpoint_atomically(trainer, self.job_dir / LAST_CHECKPOINT)
            self._last_saved = time.monotonic()

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        # The last validation before these weights were saved, so `ichseg predict` can warn
        # when the network had collapsed.
        val = (getattr(pl_module, "epoch_metrics", None) or {}).get("val")
        if val and self._validated_epoch:
            checkpoint[VALIDATION_KEY] = {"epoch": self._validated_epoch, "val": dict(val)}

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning turns SIGTERM (a scheduler's pre-emption) into SIGTERMException after the
        # current batch, and Ctrl-C into KeyboardInterrupt; keep that progress so a re-run
        # resumes here instead of at the last checkpoint epoch.
        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            self.stopped_by = "SIGTERM" if isinstance(exception, SIGTERMException) else "SIGINT"
            if self.save_last and trainer.global_step:
                save_checkpoint_atomically(trainer, self.job_dir / LAST_CHECKPOINT)

    def _log_to_wandb(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: dict
    ) -> None:
        loggers = _wandb_loggers(trainer)
        if not loggers:
            return
        flat = {
            "checkpoint/epoch": record["epoch"],
            "checkpoint/metrics_version": METRICS_VERSION,
            "checkpoint/collapsed": int(record["collapsed"]),
        }
        for stage in ("train", "val"):
            for key, value in record[stage].items():
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    flat[f"checkpoint/{stage}_{key}"] = value
        rows = read_records(self.job_dir)
        keys = sorted({k for r in rows for s in ("train", "val") for k in r[s]})
        columns = ["model", "fold", "epoch"] + [f"{s}_{k}" for s in ("train", "val") for k in keys]
        data = [
            [r["model"], r["fold"], r["epoch"]]
            + [r[s].get(k) for s in ("train", "val") for k in keys]
            for r in rows
        ]
        images, captions = self._overlays(trainer, pl_module)
        for logger in loggers:
            logger.experiment.log(flat)
            logger.log_table(key="checkpoint_records", columns=columns, data=data)
            if images:
                logger.log_image(key="val_overlays", images=images, caption=captions)

    def _overlays(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[list[np.ndarray], list[str]]:
        """CT / truth / prediction pictures of the first few validation slices with a bleed."""
        datamodule = trainer.datamodule
        if self.overlay_count <= 0 or datamodule is None:
            return [], []
        rows = datamodule.val_rows
        with_bleed = torch.from_numpy(datamodule.data.has_ich[rows.numpy()])
        rows = rows[with_bleed][: self.overlay_count]
        if len(rows) == 0:
            return [], []
        image = datamodule.images[rows].to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            pred = pl_module.predict_mask(pl_module(image)).float().cpu()
        pl_module.train(was_training)
        truth = datamodule.masks[rows].cpu()  # resident data may live on the GPU
        pictures = [
            overlay_rgb(image[i, 0].float().cpu().numpy(), truth[i, 0].numpy(), pred[i, 0].numpy())
            for i in range(len(rows))
        ]
        return pictures, datamodule.row_ids(rows)


class FiniteLossGuard(pl.Callback):
    """Stop the job as failed, with one line, once a training loss is NaN or infinite.

    Listed before CheckpointRecorder, it checks before any record or checkpoint of a diverged
    epoch is written. The flag stays on the device; it is read once per epoch, not per step.
    """

    def __init__(self) -> None:
        self._finite: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            finite = torch.isfinite(loss.detach()).all()
            self._finite = finite if self._finite is None else self._finite & finite

    def _check(self, trainer: pl.Trainer) -> None:
        if self._finite is not None and not bool(self._finite):
            raise IchsegError(
                f"training loss became NaN or infinite in epoch {trainer.current_epoch + 1} "
                f"(by step {trainer.global_step}): the run diverged; nothing of that epoch was "
                "recorded (lower model.module.lr, or check the data)"
            )

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)


class SplitProvenance(pl.Callback):
    """Every checkpoint carries its split (`ichseg_split`): mode, seeds, fold, cache and the
    patients it trained and validated on, so a later evaluation can prove it never saw its own."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        dm = trainer.datamodule
        if dm is None or getattr(dm, "train_rows", None) is None:
            return
        cfg = dm.prepare_config

        def patients(rows: torch.Tensor) -> list[int]:
            return sorted({int(p) for p in dm.row_patients(rows)})

        checkpoint[SPLIT_KEY] = split_provenance(
            mode=cfg.split,
            split_seed=cfg.seed,
            n_folds=dm.n_folds,
            fold=dm.fold,
            cache_key=Path(dm.cache_dir).name,
            train_patients=patients(dm.train_rows),
            val_patients=patients(dm.val_rows),
        )
