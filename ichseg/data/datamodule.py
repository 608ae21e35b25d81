"""The prepared cache as in-memory tensors, batched by tensor indexing, augmented on device.

The balanced set is small (hundreds of slices), so the whole of it sits in memory as tensors and
a batch is one indexing operation: the sampler yields a tensor of rows, the dataset returns the
whole batch for it, and the `DataLoader` (`batch_size=None`, no workers) only passes it through.
With `resident=True` and a trainer on a GPU, `setup()` moves the tensors to that device once, so
a batch is indexed on the GPU and only its row numbers cross PCIe; on the CPU nothing moves.
Augmentation runs after the batch reached the device (`on_after_batch_transfer`), on training
batches only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ichseg.config_schema import check_fold, check_section
from ichseg.data.augment import BatchAugment
from ichseg.data.prepare import (
    PrepareConfig,
    PreparedData,
    load_prepared,
    lost_to_resize_warning,
    prepare,
)
from ichseg.data.release import read_json_object
from ichseg.data.sources import Source
from ichseg.data.transforms import encode_intensity
from ichseg.errors import IchsegError

log = logging.getLogger("ichseg")


def _stream_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from several integers (seed, epoch, stream)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


class RowBatchSampler(Sampler[Tensor]):
    """Yields batches of row indices as tensors; the shuffle is a function of (seed, epoch)."""

    def __init__(self, rows: Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.rows = rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose order the next pass yields (Lightning calls this every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        epoch = self.epoch
        # Outside Lightning nobody calls set_epoch: advance so successive passes still differ.
        self.epoch += 1
        order = self.rows
        if self.shuffle:
            gen = torch.Generator().manual_seed(_stream_seed(self.seed, epoch))
            order = self.rows[torch.randperm(len(self.rows), generator=gen)]
        yield from order.split(self.batch_size)


class RowBatchDataset(Dataset):
    """Indexing with a tensor of rows returns that whole batch as a dict of tensors."""

    def __init__(self, images: Tensor, masks: Tensor) -> None:
        self.images = images
        self.masks = masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: Tensor | Sequence[int]) -> dict[str, Tensor]:
        """The batch of `rows`; its `"row"` stays a CPU tensor wherever the data lives."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        index = rows.to(self.images.device, non_blocking=True)
        return {"image": self.images[index], "mask": self.masks[index], "row": rows}


def _data_device(trainer: pl.Trainer | None) -> torch.device:
    """Where resident data lives: the trainer's device if it is not the CPU, else the CPU."""
    device = None if trainer is None else trainer.strategy.root_device
    return torch.device("cpu") if device is None or device.type == "cpu" else device


class ICHDataModule(pl.LightningDataModule):
    """One fold of the prepared balanced set: train/val from the fold, test from the hold-out.

    `source` gives the release (`ichseg.data.sources`); `augment` transforms training batches on
    their device (None: no augmentation). The other values are checked by the config schema's
    rules (`ichseg.config_schema`), with the line train.py gives.
    """

    def __init__(
        self,
        fold: int,
        source: Source,
        cache_root: str = "data/cache",
        size: int = 256,
        window_level: float = 40.0,
        window_width: float = 120.0,
        split: str = "slice",
        seed: int = 0,
        n_folds: int = 10,
        test_fraction: float = 0.1,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        augment: BatchAugment | None = None,
        resident: bool = True,
        intensity: str = "linear",
        allow_non_hu: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(source, Source):
            raise IchsegError(
                "data.source: expected a data source (a subclass of ichseg.data.sources.Source, "
                f"e.g. ichseg.data.sources.PhysioNet), found {type(source).__name__}"
            )
        if augment is not None and not isinstance(augment, BatchAugment):
            raise IchsegError(
                f"data.augment: expected a BatchAugment or null, found {type(augment).__name__}"
            )
        check_section("data", {"n_folds": n_folds})
        check_fold(fold, n_folds)
        # PrepareConfig checks size, window, split, seed and fractions now, not mid-run.
        self.prepare_config = PrepareConfig(
            size=size,
            level=window_level,
            width=window_width,
            split=split,
            seed=seed,
            n_folds=n_folds,
            test_fraction=test_fraction,
        )
        check_section(
            "data",
            {
                "batch_size": batch_size,
                "eval_batch_size": eval_batch_size,
                "intensity": intensity,
                "resident": resident,
                "allow_non_hu": allow_non_hu,
            },
        )
        self.fold = int(fold)
        self.n_folds = self.prepare_config.n_folds
        self.source = source
        self.cache_root = Path(cache_root)
        self.seed = self.prepare_config.seed
        self.batch_size = int(batch_size)
        self.eval_batch_size = self.batch_size if eval_batch_size is None else int(eval_batch_size)
        self.augmenter = augment
        self.intensity = intensity
        self.resident = resident
        self.allow_non_hu = allow_non_hu

        self.cache_dir: Path | None = None
        self.data: PreparedData | None = None
        self.images: Tensor | None = None
        self.masks: Tensor | None = None
        self.train_rows: Tensor | None = None
        self.val_rows: Tensor | None = None
        self.test_rows: Tensor | None = None
        self._dataset: RowBatchDataset | None = None
        self._aug_generator: torch.Generator | None = None
        self._aug_epoch = -1

    def release_dir(self) -> Path:
        """The source's release folder, made first if the source makes it (the phantom)."""
        return self.source.release_dir()

    def _ensure_cache(self) -> Path:
        """Make the release (if the source does) and the prepared cache; both reuse what exists."""
        return prepare(self.source, self.cache_root, self.prepare_config, self.allow_non_hu)

    def prepare_data(self) -> None:
        """Build the phantom and the prepared cache once (Lightning runs this on one process),
        and log the slices labelled hemorrhage the resize left without a bleed pixel."""
        cache = self._ensure_cache()
        lost = lost_to_resize_warning(read_json_object(cache / "meta.json"))
        if lost:
            log.warning("%s: %s", cache, lost)

    def setup(self, stage: str | None = None) -> None:
        """Load the cache as tensors and resolve this fold's rows (once; later stages reuse it)."""
        if self.data is not None:
            self._place()
            return
        # Recomputed rather than carried over from prepare_data, which may run in another
        # process; with the cache built this is a CSV read and a few stats.
        self.cache_dir = self._ensure_cache()
        data = load_prepared(self.cache_dir)
        found, expected = data.meta.get("source"), self.source.name
        if found != expected:
            raise IchsegError(
                f"data.source is {expected}: the release behind {self.cache_dir} is {found!r}; "
                f"point data.source.root at a {expected} release"
            )
        folds = data.splits["folds"]
        if len(folds) != self.n_folds:
            raise IchsegError(
                f"{self.cache_dir / 'splits.json'}: expected {self.n_folds} folds "
                f"(data.n_folds), found {len(folds)}"
            )
        index = {sid: row for row, sid in enumerate(data.ids)}

        def rows(ids: list[str]) -> Tensor:
            return torch.tensor([index[sid] for sid in ids], dtype=torch.long)

        self.train_rows = rows(folds[self.fold]["train"])
        self.val_rows = rows(folds[self.fold]["val"])
        self.test_rows = rows(data.splits["test"])
        self.images = encode_intensity(torch.from_numpy(data.images), self.intensity).unsqueeze(1)
        self.masks = torch.from_numpy(data.masks).unsqueeze(1).float()
        self._dataset = RowBatchDataset(self.images, self.masks)
        self.data = data
        self._place()

    def _place(self) -> None:
        """Move images and masks to the trainer's GPU if resident (else the CPU), once."""
        device = _data_device(self.trainer) if self.resident else torch.device("cpu")
        if self.images.device != device:
            self.images, self.masks = self.images.to(device), self.masks.to(device)
            self._dataset = RowBatchDataset(self.images, self.masks)

    def _loader(self, rows: Tensor | None, batch_size: int, shuffle: bool) -> DataLoader:
        if self._dataset is None or rows is None:
            raise IchsegError("ICHDataModule: call setup() before asking for a dataloader")
        sampler = RowBatchSampler(rows, batch_size, shuffle=shuffle, seed=self.seed)
        return DataLoader(
            self._dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=0,
            # Only CPU tensors can be pinned (resident GPU data raises).
            pin_memory=torch.cuda.is_available() and self.images.device.type == "cpu",
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training rows of this fold, in the order of (seed, epoch)."""
        return self._loader(self.train_rows, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation rows of this fold, in row order."""
        return self._loader(self.val_rows, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The held-out test rows (shared by every fold), in row order."""
        return self._loader(self.test_rows, self.eval_batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Augment training batches on their device; validation, test and predict pass as is."""
        trainer = self.trainer
        if self.augmenter is None or trainer is None or not trainer.training:
            return batch
        image, mask = self.augmenter(
            batch["image"], batch["mask"], generator=self._generator(batch["image"].device)
        )
        return {**batch, "image": image, "mask": mask}

    def _generator(self, device: torch.device) -> torch.Generator:
        """Augmentation RNG seeded from (seed, epoch): a resumed epoch draws what it drew before."""
        epoch = self.trainer.current_epoch
        gen = self._aug_generator
        if gen is None or gen.device != device or self._aug_epoch != epoch:
            gen = torch.Generator(device=device).manual_seed(_stream_seed(self.seed, epoch, 1))
            self._aug_generator, self._aug_epoch = gen, epoch
        return gen

    def _loaded(self) -> PreparedData:
        if self.data is None:
            raise IchsegError("ICHDataModule: call setup() before asking for row metadata")
        return self.data

    def row_ids(self, rows: Tensor | Sequence[int]) -> list[str]:
        """Slice ids (`PPP_SS`) of cache rows."""
        ids = self._loaded().ids
        return [ids[int(r)] for r in torch.as_tensor(rows).flatten()]

    def row_subtypes(self, rows: Tensor | Sequence[int]) -> np.ndarray:
        """Subtype flags (n, 5) uint8 of cache rows, in `release.SUBTYPES` order."""
        return self._loaded().subtypes[torch.as_tensor(rows).flatten().numpy()]

    def row_patients(self, rows: Tensor | Sequence[int]) -> np.ndarray:
        """Patient numbers (n,) of cache rows."""
        return self._loaded().patients[torch.as_tensor(rows).flatten().numpy()]
