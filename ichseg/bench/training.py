"""Training throughput three ways, on one composed job config.

- real: `ICHDataModule` -> on-device `BatchAugment` -> `SegmentationModule.training_step` (loss
  and metric accumulation) -> backward -> Adam, driven by a Lightning Trainer as in `train.py`;
- bare: the same network, loss and optimiser on ready tensors of the real epoch's batch sizes,
  in a plain loop (no data, no augmentation, no metrics, no Lightning): the floor the real path
  is held to, timed in windows that alternate with the real path's in one process;
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
    PeakMemory,
    StepWindows,
    peak_memory,
    summarize,
    synchronize,
)
from ichseg.config import instantiate_checked
from ichseg.data.datamodule import ICHDataModule
from ichseg.errors import IchsegError
from ichseg.runtime import apply_torch_settings
from ichseg.training.callbacks import CheckpointRecorder, FiniteLossGuard
from ichseg.training.losses import soft_dice_loss
from ichseg.training.module import SegmentationModule

# The timed fits train only: validation is timed in `epoch_costs`.
_TRAIN_ONLY = {"max_epochs": -1, "limit_val_batches": 0}


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
    trainer = bench_trainer(
        cfg, device, _job_step_hooks([LightningStepWindows(windows)]), **_TRAIN_ONLY
    )
    with peak_memory(device) as memory:
        trainer.fit(_module(cfg), datamodule=_datamodule(cfg))
    return _result(windows, memory)


def real_and_bare(cfg: DictConfig, device: torch.device, timing: dict) -> dict:
    """The real and the bare path side by side: their timed windows alternate in one process,
    so a change in the machine's speed reaches both alike; `pairs` holds bare / real of each
    bare window and the real window right after it.

    The real path's memory is read when its warm-up ends, before the bare path exists; the bare
    path has no memory figure of its own.
    """
    bare_precision(cfg, device)
    datamodule, module = _datamodule(cfg), _module(cfg)
    alternate = _AlternateWithBare(cfg, device, timing, PeakMemory(device))
    trainer = bench_trainer(cfg, device, _job_step_hooks([alternate]), **_TRAIN_ONLY)
    trainer.fit(module, datamodule=datamodule)
    real, bare = alternate.real, alternate.bare.windows
    ratios = [b / r for b, r in zip(bare.images_per_s, real.images_per_s, strict=True)]
    return {
        "real": _result(real, alternate.memory),
        "bare": {**_result(bare, None), "batch_sizes": alternate.bare.batch_sizes},
        "pairs": summarize(ratios),
    }


def _job_step_hooks(callbacks: list) -> list:
    """`callbacks` plus the job's own per-step callback (the finite-loss check)."""
    return [FiniteLossGuard(), *callbacks]


def bare_precision(cfg: DictConfig, device: torch.device) -> str:
    """The job's precision, refused in one line where the bare loop cannot reproduce it."""
    precision = job_precision(cfg, device)
    if precision not in ("32-true", "bf16-mixed"):
        raise IchsegError(f"precision={precision}: the bare path times 32-true and bf16-mixed")
    return precision


def epoch_batch_sizes(train_images: int, batch_size: int) -> list[int]:
    """The batch sizes of one training epoch in order: full batches, then the remainder."""
    full, rest = divmod(train_images, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


class BareLoop:
    """Forward, Dice loss, backward and Adam of the job's network on ready tensors, in a plain
    loop: no data pipeline, augmentation, metrics or Lightning, the floor the real path is held
    to. Steps cycle through `batch_sizes` (a real epoch's, its smaller last batch included), so
    both paths train on batches of the same sizes."""

    def __init__(
        self, cfg: DictConfig, device: torch.device, timing: dict, batch_sizes: list[int]
    ) -> None:
        precision = bare_precision(cfg, device)
        # The job's module, weights and PyTorch settings, in a copy of its own.
        module = _module(cfg).to(device)
        module.train()
        self.net = module.net
        self.optimizer = module.configure_optimizers()["optimizer"]
        self.batch_sizes = list(batch_sizes)
        size = int(cfg.data.size)
        generator = torch.Generator(device=device).manual_seed(0)
        self.batches = {}
        for batch in sorted(set(self.batch_sizes)):
            image = torch.rand(batch, 1, size, size, device=device, generator=generator)
            if module.hparams.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            mask = torch.rand(batch, 1, size, size, device=device, generator=generator) > 0.9
            self.batches[batch] = (image, mask.float())
        self.autocast = torch.autocast(
            device.type, torch.bfloat16, enabled=precision == "bf16-mixed"
        )
        self.windows = _windows(device, timing)
        self._next = 0

    def step(self) -> int:
        """One training step on the next batch size of the cycle; returns its images."""
        batch = self.batch_sizes[self._next]
        self._next = (self._next + 1) % len(self.batch_sizes)
        image, mask = self.batches[batch]
        with self.autocast:
            loss = soft_dice_loss(self.net(image), mask)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return batch

    def run_window(self) -> None:
        """Time one more window (the first call warms up first)."""
        timed = len(self.windows.images_per_s) + 1
        if self.windows.started:
            self.windows.resume()
        else:
            self.windows.start()
        while len(self.windows.images_per_s) < timed:
            self.windows.step_done(self.step())


class _AlternateWithBare(pl.Callback):
    """Times the real fit in windows and runs one bare window before each of them."""

    def __init__(
        self, cfg: DictConfig, device: torch.device, timing: dict, watch: PeakMemory
    ) -> None:
        self.cfg, self.device, self.timing, self.watch = cfg, device, timing, watch
        self.real = _windows(device, timing)
        self.bare: BareLoop | None = None
        self.memory: dict = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.real.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        windows = self.real
        warming, timed = windows.steps_per_window == 0, len(windows.images_per_s)
        if windows.step_done(int(batch["image"].shape[0])):
            trainer.should_stop = True
            return
        if warming and windows.steps_per_window:
            self.memory = self.watch.read()
            dm = trainer.datamodule
            sizes = epoch_batch_sizes(len(dm.train_rows), dm.batch_size)
            self.bare = BareLoop(self.cfg, self.device, self.timing, sizes)
        elif len(windows.images_per_s) == timed:
            return
        self.bare.run_window()
        windows.resume()


def monai_path(cfg: DictConfig, device: torch.device, timing: dict, workers: int) -> dict:
    """Images/s of the same module fed by a MONAI Dataset + DataLoader with worker processes."""
    datamodule = _datamodule(cfg)
    datamodule.setup("fit")
    loader = monai_loader(datamodule, workers, pin_memory=device.type == "cuda")
    windows = _windows(device, timing)
    trainer = bench_trainer(
        cfg, device, _job_step_hooks([LightningStepWindows(windows)]), **_TRAIN_ONLY
    )
    with peak_memory(device) as memory:
        trainer.fit(_module(cfg), train_dataloaders=loader)
    return {**_result(windows, memory), "workers": workers}


def monai_loader(datamodule: ICHDataModule, workers: int, pin_memory: bool):
    """The fold's training slices behind MONAI dictionary transforms matching `BatchAugment`
    (none but the tensor conversion when `data.augment` is off, as in the real path)."""
    from monai.data import Dataset
    from monai.data.utils import worker_init_fn
    from monai.transforms import Compose, EnsureTyped, RandAffined, RandFlipd
    from torch.utils.data import DataLoader

    from ichseg.data.augment import FILL_MODES

    rows = datamodule.train_rows.numpy()
    images = datamodule.images.cpu().numpy()
    masks = datamodule.masks.cpu().numpy()
    items = [{"image": images[r], "mask": masks[r]} for r in rows]
    size = images.shape[-1]
    keys = ("image", "mask")
    aug = datamodule.augmenter
    random = []
    if aug is not None:
        random = [
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
        ]
    transform = Compose([*random, EnsureTyped(keys, dtype=torch.float32, track_meta=False)])
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


def _result(windows: StepWindows, memory: dict | None) -> dict:
    out = {
        "images_per_s": summarize(windows.images_per_s),
        "steps_per_window": windows.steps_per_window,
        "warmup_steps": windows.warmup_done,
    }
    if memory is not None:
        out["memory"] = memory
    return out


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
