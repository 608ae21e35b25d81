"""The LightningModule: any network of `model.module.net`, trained with soft Dice loss, scored per
protocol."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytorch_lightning as pl
import torch

from ichseg.checkpoint import CHECKPOINT_VERSION, PREPROCESS_KEY, RNG_KEY, VERSION_KEY, Preprocess
from ichseg.metrics import PROTOCOLS, ProtocolAccumulator
from ichseg.models.network import build_net, net_config
from ichseg.training.losses import soft_dice_loss
from ichseg.training.optim import build_optimizer, inverse_time_decay

STAGES = ("train", "val")
# The progress bar shows the validation Dice of the paper and lesion protocols.
PROGRESS_BAR = tuple(f"val/{PROTOCOLS[name].keys[0]}" for name in ("paper", "lesion"))


class SegmentationModule(pl.LightningModule):
    """Binary hemorrhage segmentation with soft Dice loss, Adam, and every metric protocol.

    The network is built from its config node `net` (`ichseg.models.network`), saved resolved
    among the hyperparameters, so a checkpoint alone restores the model.
    Train metrics are the running values over the epoch's augmented, train-mode batches, as
    Keras reported them in the paper; validation metrics come from the unaugmented fold in eval
    mode. Both are computed once per epoch, at the end of validation, and kept in
    `epoch_metrics = {"train": {...}, "val": {...}}` for the checkpoint records. Validation also
    reports the `onebatch` protocol: what the authors' one-batch Keras validation would have
    shown, drawn afresh every epoch from a generator seeded by the epoch.
    """

    def __init__(
        self,
        net: Mapping,
        optimizer: str = "keras_adam",
        lr: float = 1e-4,
        adam_eps: float = 1e-7,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        threshold: float = 0.5,
        smooth: float = 100.0,
        loss_per_sample: bool = False,
        min_detection_area: int = 0,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.hparams["net"] = net_config(net)
        self.net = build_net(self.hparams.net)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            # In place (nn.Module.compile): the state_dict keys, and so checkpoints, stay as they
            # are, and a checkpoint loads with compile=False for inference.
            self.net.compile()
        # The accumulators check the threshold (a probability in (0, 1)) before it is used here.
        self.scores = {
            stage: ProtocolAccumulator(min_area=min_detection_area, threshold=threshold)
            for stage in STAGES
        }
        # A probability threshold p on sigmoid outputs equals the logit threshold log(p / (1 - p)).
        self.logit_threshold = math.log(threshold / (1.0 - threshold))
        self._loss_total: dict[str, torch.Tensor | float] = dict.fromkeys(STAGES, 0.0)
        self._loss_count: dict[str, int] = dict.fromkeys(STAGES, 0)
        self.epoch_metrics: dict[str, dict[str, float]] = {}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of windowed CT slices (B, 1, H, W)."""
        if self.hparams.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.net(image)

    def predict_mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Boolean masks from logits at the configured probability threshold."""
        return logits > self.logit_threshold

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        target = batch["mask"]
        loss = soft_dice_loss(
            logits, target, smooth=self.hparams.smooth, per_sample=self.hparams.loss_per_sample
        )
        with torch.no_grad():
            self.scores[stage].update(torch.sigmoid(logits.detach().float()), target > 0.5)
        # Accumulate on the device: a .item() per step would force a GPU sync.
        self._loss_total[stage] = self._loss_total[stage] + loss.detach() * target.shape[0]
        self._loss_count[stage] += target.shape[0]
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def _keras_validation(self) -> tuple[int, torch.Generator]:
        """Batch size and generator for this epoch's `onebatch` draw (Keras' seed was 1)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        batch_size = getattr(datamodule, "batch_size", None) or self.scores["val"].batch_sizes[0]
        return batch_size, torch.Generator().manual_seed(1 + self.current_epoch)

    def _finish(self, stage: str) -> dict[str, float]:
        """This epoch's loss and protocol metrics for `stage`; resets the accumulators."""
        count = self._loss_count[stage]
        metrics = {"loss": float(self._loss_total[stage]) / count if count else math.nan}
        if count:
            draw = self._keras_validation() if stage == "val" else None
            metrics.update(self.scores[stage].compute(keras_validation=draw))
        self.scores[stage].reset()
        self._loss_total[stage], self._loss_count[stage] = 0.0, 0
        return metrics

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._finish("val")
            return
        self.epoch_metrics = {stage: self._finish(stage) for stage in STAGES}
        logged = {
            f"{stage}/{key}": value
            for stage, values in self.epoch_metrics.items()
            for key, value in values.items()
            if not math.isnan(value)
        }
        shown = {k: v for k, v in logged.items() if k in PROGRESS_BAR}
        self.log_dict(shown, prog_bar=True)
        self.log_dict({k: v for k, v in logged.items() if k not in shown})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning does not save the global RNG, which dropout draws from: without it a resumed
        # run would diverge from an uninterrupted one.
        checkpoint[VERSION_KEY] = CHECKPOINT_VERSION
        checkpoint[RNG_KEY] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint[RNG_KEY]["cuda"] = torch.cuda.get_rng_state_all()
        # `ichseg predict` must window and resize whole scans exactly as the training cache was.
        datamodule = self.trainer.datamodule
        prepare_config = getattr(datamodule, "prepare_config", None)
        if prepare_config is not None:
            checkpoint[PREPROCESS_KEY] = Preprocess(
                size=prepare_config.size,
                level=prepare_config.level,
                width=prepare_config.width,
                intensity=getattr(datamodule, "intensity", "linear"),
            ).entry()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Applied at the next epoch start, not here: Lightning may still finish the checkpointed
        # epoch's loop (drawing loader seeds) before training resumes.
        self._resumed_rng = checkpoint.get(RNG_KEY)

    def on_train_epoch_start(self) -> None:
        state = getattr(self, "_resumed_rng", None)
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        self._resumed_rng = None

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        optimizer = build_optimizer(
            hp.optimizer, self.net.parameters(), hp.lr, hp.adam_eps, hp.weight_decay
        )
        # Stepped after every optimiser step, as Keras decays per iteration.
        schedule = {"scheduler": inverse_time_decay(optimizer, hp.lr_decay), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}
