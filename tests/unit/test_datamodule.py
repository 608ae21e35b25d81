"""ICHDataModule on a tiny phantom: config checks, fold rows, batching, train-only augmentation."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from ichseg.data.augment import BatchAugment
from ichseg.data.datamodule import ICHDataModule, RowBatchSampler, _data_device
from ichseg.data.sources import Phantom, PhysioNet
from ichseg.errors import IchsegError

FLIP_ONLY = BatchAugment(rotation_deg=0, shift=0, shear_deg=0, zoom=0, hflip=1.0)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-patient 64-px phantom and a cache root shared by the module's data modules."""
    base = tmp_path_factory.mktemp("dm")
    return {"phantom": base / "phantom", "cache": base / "cache"}


def _dm(roots: dict[str, Path], fold: int = 0, **kwargs) -> ICHDataModule:
    phantom = Phantom(root=str(roots["phantom"]), patients=6, size=64, seed=0)
    base = {"source": phantom, "cache_root": str(roots["cache"]), "size": 32, "batch_size": 8}
    return ICHDataModule(fold=fold, **(base | kwargs))


@pytest.fixture(scope="module")
def dm(roots: dict[str, Path]) -> ICHDataModule:
    """Fold 1 set up, flip-only augmentation (exactly checkable), val batches of 4 (6 rows)."""
    module = _dm(roots, fold=1, augment=FLIP_ONLY, eval_batch_size=4)
    module.prepare_data()
    module.setup("fit")
    return module


def _cache_ids(cache_dir: Path) -> list[str]:
    with open(cache_dir / "index.csv", newline="") as fh:
        return [row["slice_id"] for row in csv.DictReader(fh)]


@pytest.mark.parametrize(
    ("fold", "message"),
    [
        (10, r"fold=10 is out of range: expected 0\.\.9"),
        (-1, r"fold=-1 is out of range"),
        ("abc", r"fold='abc' is not an integer"),
        ("3", r"fold='3' is not an integer"),
        ("0..9", r"fold='0\.\.9' is not an integer"),
        (True, r"fold=True is not an integer"),
        (2.0, r"fold=2\.0 is not an integer"),
    ],
)
def test_bad_fold_fails_in_constructor(fold: object, message: str, tmp_path: Path) -> None:
    with pytest.raises(IchsegError, match=message):
        ICHDataModule(fold=fold, source=PhysioNet(str(tmp_path)))


def test_fold_range_follows_n_folds(tmp_path: Path) -> None:
    ICHDataModule(fold=4, source=PhysioNet(str(tmp_path)), n_folds=5)
    with pytest.raises(IchsegError, match=r"fold=5 is out of range: expected 0\.\.4"):
        ICHDataModule(fold=5, source=PhysioNet(str(tmp_path)), n_folds=5)


@pytest.mark.parametrize("source", [None, "/data/ct-ich", {"root": "/data/ct-ich"}])
def test_data_source_must_be_a_release_source(source: object) -> None:
    with pytest.raises(IchsegError, match=r"^data\.source: expected a data source"):
        ICHDataModule(fold=0, source=source)


def test_sources_give_their_release_folder(tmp_path: Path) -> None:
    phantom = Phantom(root=str(tmp_path / "p"), patients=6, size=64, seed=0)
    assert ICHDataModule(fold=0, source=phantom).release_dir() == tmp_path / "p"
    assert json.loads((tmp_path / "p" / "phantom.json").read_text()) == {
        "patients": 6,
        "size": 64,
        "seed": 0,
    }
    assert PhysioNet(root=str(tmp_path / "p")).release_dir() == tmp_path / "p"


def test_bad_augment_and_batch_size(tmp_path: Path) -> None:
    # The config's mapping form is instantiated by Hydra; a raw mapping is not an augmentation.
    with pytest.raises(IchsegError, match=r"data\.augment: expected a BatchAugment or null"):
        ICHDataModule(fold=0, source=PhysioNet(str(tmp_path)), augment={"hflip": 1.0})
    with pytest.raises(IchsegError, match=r"data\.batch_size=0"):
        ICHDataModule(fold=0, source=PhysioNet(str(tmp_path)), batch_size=0)


def test_augmentation_off(tmp_path: Path) -> None:
    assert ICHDataModule(fold=0, source=PhysioNet(str(tmp_path)), augment=None).augmenter is None
    assert ICHDataModule(fold=0, source=PhysioNet(str(tmp_path))).augmenter is None
    kept = ICHDataModule(fold=0, source=PhysioNet(str(tmp_path)), augment=FLIP_ONLY)
    assert kept.augmenter is FLIP_ONLY


def test_rows_match_splits_json(dm: ICHDataModule) -> None:
    splits = json.loads((dm.cache_dir / "splits.json").read_text())
    ids = _cache_ids(dm.cache_dir)
    fold = splits["folds"][1]
    assert [ids[r] for r in dm.train_rows.tolist()] == fold["train"]
    assert [ids[r] for r in dm.val_rows.tolist()] == fold["val"]
    assert [ids[r] for r in dm.test_rows.tolist()] == splits["test"]
    train, val, test = (set(r.tolist()) for r in (dm.train_rows, dm.val_rows, dm.test_rows))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(len(ids)))
    assert dm.row_ids(dm.test_rows) == splits["test"]


def test_row_metadata_matches_index_csv(dm: ICHDataModule) -> None:
    with open(dm.cache_dir / "index.csv", newline="") as fh:
        index = list(csv.DictReader(fh))
    rows = dm.val_rows[:5]
    assert dm.row_patients(rows).tolist() == [int(index[r]["patient"]) for r in rows]
    names = ("Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural")
    expected = [[int(index[r][name]) for name in names] for r in rows]
    assert dm.row_subtypes(rows).tolist() == expected


def test_batches_are_the_cache_arrays(dm: ICHDataModule) -> None:
    images = np.load(dm.cache_dir / "images.npy")
    masks = np.load(dm.cache_dir / "masks.npy")
    batches = list(dm.val_dataloader())
    n_val = len(dm.val_rows)
    assert n_val > 4  # so the batching below has a full and a partial batch
    sizes = [4] * (n_val // 4) + ([n_val % 4] if n_val % 4 else [])
    assert [len(b["row"]) for b in batches] == sizes
    assert torch.equal(torch.cat([b["row"] for b in batches]), dm.val_rows)
    for batch in batches:
        rows = batch["row"].numpy()
        assert batch["image"].dtype == torch.float32 and batch["mask"].dtype == torch.float32
        assert batch["row"].dtype == torch.long
        assert batch["image"].shape == (len(rows), 1, 32, 32) == batch["mask"].shape
        expected = torch.from_numpy(images[rows].astype(np.float32) / 255).unsqueeze(1)
        torch.testing.assert_close(batch["image"], expected, atol=1e-7, rtol=0)
        assert torch.equal(batch["mask"], torch.from_numpy(masks[rows]).float().unsqueeze(1))
    assert masks.any(), "phantom should have hemorrhage pixels"


def test_train_pass_covers_every_row_once_and_reshuffles_per_epoch(dm: ICHDataModule) -> None:
    loader = dm.train_dataloader()
    orders = []
    for epoch in (0, 1, 0):
        loader.sampler.set_epoch(epoch)
        order = torch.cat([b["row"] for b in loader])
        assert sorted(order.tolist()) == sorted(dm.train_rows.tolist())
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])
    assert torch.equal(orders[0], orders[2])
    # A fresh data module with the same seed replays the same order; another seed does not.
    fresh = RowBatchSampler(dm.train_rows, 8, shuffle=True, seed=dm.seed)
    assert torch.equal(torch.cat(list(fresh)), orders[0])
    other = RowBatchSampler(dm.train_rows, 8, shuffle=True, seed=dm.seed + 1)
    assert not torch.equal(torch.cat(list(other)), orders[0])


def test_augmentation_only_while_training(dm: ICHDataModule) -> None:
    batch = next(iter(dm.val_dataloader()))
    original = {k: v.clone() for k, v in batch.items()}
    try:
        dm.trainer = SimpleNamespace(training=False, current_epoch=0)
        out = dm.on_after_batch_transfer(batch, 0)
        assert torch.equal(out["image"], original["image"])
        dm.trainer = SimpleNamespace(training=True, current_epoch=0)
        out = dm.on_after_batch_transfer(batch, 0)
        assert torch.equal(out["image"], original["image"].flip(-1))
        assert torch.equal(out["mask"], original["mask"].flip(-1))
        assert torch.equal(out["row"], original["row"])
    finally:
        dm.trainer = None
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)["image"], original["image"])


def test_caches_of_different_sources_never_mix(roots: dict[str, Path], dm: ICHDataModule) -> None:
    # The same folder read as PhysioNet's layout and as the phantom: two caches, each its own.
    module = _dm(roots, source=PhysioNet(root=str(roots["phantom"])))
    module.setup("fit")
    phantom = _dm(roots)
    phantom.setup("fit")
    assert module.cache_dir != phantom.cache_dir
    assert (module.data.meta["source"], phantom.data.meta["source"]) == ("physionet", "phantom")


class _Recorder(pl.LightningModule):
    """Records what each step saw, comparing images with the un-augmented cache tensors."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = images
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[str, list] = {"train": [], "val": []}

    def _record(self, stage: str, batch: dict) -> None:
        clean = self.images[batch["row"]]
        flipped = torch.equal(batch["image"], clean.flip(-1))
        self.seen[stage].append((self.current_epoch, batch["row"].clone(), flipped))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._record("train", batch)
        return (self.weight * batch["image"].mean()).sum() + self.weight.square().sum()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._record("val", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_augments_training_batches_only(roots: dict[str, Path]) -> None:
    module = _dm(roots, fold=2, augment=FLIP_ONLY)
    module.prepare_data()
    module.setup("fit")
    recorder = _Recorder(module.images)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
    )
    trainer.fit(recorder, datamodule=module)
    train, val = recorder.seen["train"], recorder.seen["val"]
    assert train and all(flipped for _, _, flipped in train)
    assert val and not any(flipped for _, _, flipped in val)
    per_epoch = [torch.cat([rows for e, rows, _ in train if e == epoch]) for epoch in (0, 1)]
    for order in per_epoch:
        assert sorted(order.tolist()) == sorted(module.train_rows.tolist())
    assert not torch.equal(per_epoch[0], per_epoch[1])


def _on(device: str) -> SimpleNamespace:
    """A stand-in trainer whose strategy runs on `device`."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [(None, "cpu"), (_on("cpu"), "cpu"), (_on("cuda:0"), "cuda:0"), (_on("meta"), "meta")],
)
def test_data_device_is_the_trainers_unless_cpu(trainer, expected: str) -> None:
    assert _data_device(trainer) == torch.device(expected)


def test_resident_data_moves_to_the_trainers_device_once(
    roots: dict[str, Path], dm: ICHDataModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The meta device stands in for a GPU: tensors move there, and nothing can be read back.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    resident = _dm(roots, fold=1, eval_batch_size=4)
    resident.trainer = _on("meta")
    resident.setup("fit")
    assert resident.images.device.type == "meta" == resident.masks.device.type
    images = resident.images
    resident.setup("validate")
    assert resident.images is images  # moved once, not again per stage
    loader = resident.val_dataloader()
    assert not loader.pin_memory  # pinning a device tensor raises
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [len(b["row"]) for b in batches]
    for batch in batches:
        assert batch["image"].device.type == "meta" == batch["mask"].device.type
        assert batch["row"].device.type == "cpu"
    assert torch.equal(torch.cat([b["row"] for b in batches]), dm.val_rows)

    # On a CPU trainer, or with resident=False, the data stays on the CPU and pins for a GPU.
    for kept in (_dm(roots, fold=1), _dm(roots, fold=1, resident=False)):
        kept.trainer = _on("cpu") if kept.resident else _on("meta")
        kept.setup("fit")
        assert kept.images.device.type == "cpu" == kept.masks.device.type
        assert kept.val_dataloader().pin_memory


def test_resident_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(
        IchsegError, match=r"^data\.resident='yes' is not allowed: expected true or false$"
    ):
        ICHDataModule(fold=0, source=PhysioNet(str(tmp_path)), resident="yes")
