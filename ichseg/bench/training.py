"""Training throughput three ways, on one composed job config.

- real: `ICHDataModule` -> on-device `BatchAugment` -> `SegmentationModule.training_step` (loss
  and metric accumulation) -> backward -> Adam, driven by a Lightning Trainer as in `train.py`;
- bare: the same network, loss and optimiser on ready tensors of the batch's shape, in a plain
  loop (no data, no augmentation, no metrics, no Lightning): the floor the real path is held to;
- monai: what a user would otherwise write, a torch `DataLoader` over a MONAI `Dataset` of the
  same training slices with per-sample MONAI `RandAffined` + `RandFlipd` in worker processes,
  feeding the same LightningModule.

Plus the epoch's other costs: the validation loop over the fold, and the checkpoint writes.
"""

from __future__ import annotations

import math
import tempfile
import time

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from ichseg.bench.experiment import bench_trainer, job_precision
from ichseg.bench.measure import (
    LightningStepWindows,
    StepWindows,
    peak_memory,
    summarize,
    synchronize,
)
from ichseg.config import instantiate_checked
from ichseg.data.datamodule import ICHDataModule
from ichseg.errors import IchsegError
from ichseg.runtime import apply_torch_settings
from ichseg.training.callbacks import CheckpointRecorder
from ichseg.training.losses import soft_dice_loss
from ichseg.training.module import SegmentationModule


def _datamodule(cfg: DictConfig, **overrides) -> ICHDataModule:
    return instantiate_checked(cfg.data, **overrides)


def _module(cfg: DictConfig) -> SegmentationModule:
    """The job's module, seed and PyTorch settings: every path starts from the same weights."""
    apply_torch_settings(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    return instantiate_checked(cfg.model.module)


def _windows(device: torch.device, timing: dict) -> StepWindows:
    return StepWindows(device, **timing)


def real_path(cfg: DictConfig, device: torch.device, timing: dict) -> dict:
    """Images/s of the job's own training loop (validation switched off), and its memory."""
    windows = _windows(device, timing)
    datamodule, module = _datamodule(cfg), _module(cfg)
    trainer = bench_trainer(
        cfg, device, [LightningStepWindows(windows)], max_epochs=-1, limit_val_batches=0
    )
    with peak_memory(device) as memory:
        trainer.fit(module, datamodule=datamodule)
    return _result(windows, memory)


def bare_path(cfg: DictConfig, device: torch.device, timing: dict) -> dict:
    """Images/s of forward, Dice loss, backward and Adam on ready tensors: no data pipeline."""
    precision = job_precision(cfg, device)
    if precision not in ("32-true", "bf16-mixed"):
        raise IchsegError(f"precision={precision}: the bare path times 32-true and bf16-mixed")
    module = _module(cfg).to(device)
    module.train()
    net, optimizer = module.net, module.configure_optimizers()["optimizer"]
    batch, size = int(cfg.data.batch_size), int(cfg.data.size)
    generator = torch.Generator(device=device).manual_seed(0)
    image = torch.rand(batch, 1, size, size, device=device, generator=generator)
    if module.hparams.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(batch, 1, size, size, device=device, generator=generator) > 0.9).float()
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16-mixed")
    windows = _windows(device, timing)
    with peak_memory(device) as memory:
        windows.start()
        done = False
        while not done:
            with autocast:
                loss = soft_dice_loss(net(image), mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done = windows.step_done(batch)
    return _result(windows, memory)


def monai_path(cfg: DictConfig, device: torch.device, timing: dict, workers: int) -> dict:
    """Images/s of the same module fed by a MONAI Dataset + DataLoader with worker processes."""
    datamodule = _datamodule(cfg)
    datamodule.setup("fit")
    loader = monai_loader(datamodule, workers, pin_memory=device.type == "cuda")
    windows = _windows(device, timing)
    trainer = bench_trainer(
        cfg, device, [LightningStepWindows(windows)], max_epochs=-1, limit_val_batches=0
    )
    with peak_memory(device) as memory:
        trainer.fit(_module(cfg), train_dataloaders=loader)
    return {**_result(windows, memory), "workers": workers}


def monai_loader(datamodule: ICHDataModule, workers: int, pin_memory: bool):
    """The fold's training slices behind MONAI dictionary transforms matching `BatchAugment`."""
    from monai.data import Dataset
    from monai.data.utils import worker_init_fn
    from monai.transforms import Compose, EnsureTyped, RandAffined, RandFlipd
    from torch.utils.data import DataLoader

    from ichseg.data.augment import FILL_MODES

    aug = datamodule.augmenter
    if aug is None:
        raise IchsegError("data.augment is off: the MONAI comparison needs the augmentation on")
    rows = datamodule.train_rows.numpy()
    images = datamodule.images.cpu().numpy()
    masks = datamodule.masks.cpu().numpy()
    items = [{"image": images[r], "mask": masks[r]} for r in rows]
    size = images.shape[-1]
    keys = ("image", "mask")
    transform = Compose(
        [
            RandFlipd(keys, prob=aug.hflip, spatial_axis=1),
            RandAffined(
                keys,
                prob=aug.p,
                rotate_range=math.radians(aug.rotation_deg),
                shear_range=(math.tan(math.radians(aug.shear_deg)), 0.0),
                translate_range=(aug.shift * size, aug.shift * size),
                scale_range=(aug.zoom, aug.zoom),
                mode=("bilinear", "nearest"),
                padding_mode=FILL_MODES[aug.fill],
            ),
            EnsureTyped(keys, dtype=torch.float32, track_meta=False),
        ]
    )
    return DataLoader(
        Dataset(items, transform),
        batch_size=datamodule.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=worker_init_fn,
    )


class _TimedEpoch(CheckpointRecorder):
    """CheckpointRecorder that also times the validation loop and its own checkpoint writes."""

    def __init__(self, device: torch.device, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.device = device
        self.validation_s: list[float] = []
        self.writes: list[tuple[bool, float]] = []

    def on_validation_start(self, trainer, pl_module) -> None:
        synchronize(self.device)
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        synchronize(self.device)
        start = time.perf_counter()
        self.validation_s.append(start - self._val_start)
        super().on_validation_end(trainer, pl_module)
        epoch = trainer.current_epoch + 1
        is_checkpoint = self.is_checkpoint_epoch(epoch, trainer.max_epochs)
        self.writes.append((is_checkpoint, time.perf_counter() - start))


def epoch_costs(cfg: DictConfig, device: torch.device, repeats: int) -> dict:
    """Seconds of one validation pass over the fold, of the per-epoch `last.ckpt` write, and of
    a checkpoint epoch's writes (epoch checkpoint, record, last.ckpt), each after a warm-up.

    The fit runs one 2-image training step per epoch (training speed is timed elsewhere) and
    alternates plain and checkpoint epochs.
    """
    eval_batch = cfg.data.eval_batch_size or cfg.data.batch_size
    datamodule = _datamodule(cfg, batch_size=2, eval_batch_size=eval_batch)
    epochs = 2 * (repeats + 1)
    with tempfile.TemporaryDirectory(prefix="ichseg-bench-") as job_dir:
        timer = _TimedEpoch(
            device, job_dir, model_name=cfg.model.name, fold=cfg.fold, every_n_epochs=2
        )
        trainer = bench_trainer(cfg, device, [timer], max_epochs=epochs, limit_train_batches=1)
        trainer.fit(_module(cfg), datamodule=datamodule)
    plain = [s for is_ckpt, s in timer.writes if not is_ckpt][1:]
    checkpoint = [s for is_ckpt, s in timer.writes if is_ckpt][1:]
    return {
        "validation_s": summarize(timer.validation_s[1:]),
        "save_last_s": summarize(plain),
        "checkpoint_epoch_writes_s": summarize(checkpoint),
        "val_images": len(datamodule.val_rows),
        "train_images": len(datamodule.train_rows),
    }


def _result(windows: StepWindows, memory: dict) -> dict:
    return {
        "images_per_s": summarize(windows.images_per_s),
        "steps_per_window": windows.steps_per_window,
        "warmup_steps": windows.warmup_done,
        "memory": memory,
    }


def epoch_shares(
    costs: dict, train_images_per_s: float, checkpoint_every: int, last_every_s: float
) -> dict:
    """An epoch's time split into training, validation and amortised checkpoint writes.

    `last.ckpt` is written every ceil(last_every_s / epoch) epochs, and at least at every
    checkpoint epoch (`CheckpointRecorder`); a checkpoint epoch's other writes come once in
    `checkpoint_every` epochs.
    """
    train_s = costs["train_images"] / train_images_per_s
    val_s = costs["validation_s"]["median"]
    last_s = costs["save_last_s"]["median"]
    checkpoint_extra = max(costs["checkpoint_epoch_writes_s"]["median"] - last_s, 0.0)
    epochs_per_last = max(1, math.ceil(last_every_s / (train_s + val_s)))
    parts = {
        "train": train_s,
        "validation": val_s,
        "save_last": last_s / min(epochs_per_last, checkpoint_every),
        "checkpoint": checkpoint_extra / checkpoint_every,
    }
    total = sum(parts.values())
    return {
        "epoch_s": total,
        "seconds": parts,
        "share": {key: value / total for key, value in parts.items()},
        "checkpoint_every": checkpoint_every,
        "last_checkpoint_every_s": last_every_s,
        "epochs_per_last_checkpoint": min(epochs_per_last, checkpoint_every),
    }
