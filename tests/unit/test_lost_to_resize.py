"""Slices labelled hemorrhage whose bleed the resize empties: counted in meta.json, named in one
warning, and left out of the balanced set, so training, splits, subtype subsets and overlay
captions all go by the resized mask."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ichseg.checkpoint import write_checkpoint
from ichseg.cli import main
from ichseg.data.datamodule import ICHDataModule
from ichseg.data.prepare import LOST_TO_RESIZE_RULE, load_prepared
from ichseg.data.release import SUBTYPES, PhysioNetRelease
from ichseg.data.sources import PhysioNet
from ichseg.errors import IchsegError
from ichseg.models.unet import unet_config
from ichseg.report.figures import test_overlays as draw_overlays
from ichseg.report.heldout_slices import NO_HEMORRHAGE, SliceExample, SliceResult, evaluate_slices
from ichseg.report.selection import select
from ichseg.report.table import table_rows
from ichseg.sweeps.local import collect_sweep
from ichseg.training.module import SegmentationModule
from tests.helpers.figure_text import titles
from tests.unit.test_prepare import ICH_PATIENTS, ICH_SLICES, write_tiny_release
from tests.unit.test_report import make_sweep

# Bleeds of two pixels at 128 px on slices without a block. At 48 px every output pixel
# averages a window of 3 or 4 input pixels a side (area interpolation), so two pixels cover at
# most 2/9 of one: below the 0.5 a mask pixel needs, the bleed is gone.
SPECKS = {(52, 4): (2,), (53, 5): (2,), (54, 6): (2, 3)}  # Subarachnoid; Epidural + Subarachnoid
SPECK_IDS = ["052_04", "053_05", "054_06"]
BLOCK_IDS = sorted(f"{p:03d}_{s:02d}" for p in ICH_PATIENTS for s in ICH_SLICES)
ARGS = ["--size", "48", "--n-folds", "3", "--test-fraction", "0.2"]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_tiny_release(tmp_path_factory.mktemp("specks"), size=128, specks=SPECKS)


def _prepare(release: Path, out: Path, capsys, *args: str) -> tuple[int, list[str]]:
    """`ichseg prepare RELEASE OUT ARGS`: its exit status and stderr lines."""
    code = main(["prepare", str(release), str(out), *ARGS, *args])
    return code, capsys.readouterr().err.splitlines()


@pytest.mark.reliability(
    case="hemorrhage slices whose bleed the resize empties",
    did="three slices labelled hemorrhage with a bleed of two pixels at 128 px, prepared at 48 px",
    entry="ichseg prepare",
)
def test_prepare_counts_names_and_leaves_out_slices_whose_bleed_is_gone(
    release, tmp_path, capsys, record_behaviour
):
    out = tmp_path / "cache"
    code, err = _prepare(release, out, capsys)
    assert code == 0
    (cache,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert err == [
        f"ichseg prepare: warning: {cache}: 3 slices labelled hemorrhage (Subarachnoid 3, "
        "Epidural 1) have no bleed pixel left at 48 px and are left out of the balanced set: "
        "052_04, 053_05, 054_06 (meta.json lost_to_resize)"
    ]
    record_behaviour(f"exit 0, one warning line: {err[0]}")
    # A second run reuses the cache and says it again.
    assert _prepare(release, out, capsys) == (0, err)

    data = load_prepared(cache)
    per_subtype = {name: [] for name in SUBTYPES}
    per_subtype["Subarachnoid"] = SPECK_IDS
    per_subtype["Epidural"] = ["054_06"]
    assert data.meta["lost_to_resize"] == {
        "rule": LOST_TO_RESIZE_RULE,
        "size": 48,
        "n_slices": 3,
        "slice_ids": SPECK_IDS,
        "subtypes": {
            name: {"n_slices": len(ids), "slice_ids": ids} for name, ids in per_subtype.items()
        },
    }
    # The balanced set: the 12 slices a bleed is left in, and the first 12 clean ones of the
    # seed's draw of 15 (as many as the release labels hemorrhage).
    labels = PhysioNetRelease.open(release).labels
    clean = [lab.slice_id for lab in labels if not lab.has_ich]
    drawn = np.random.default_rng(0).choice(len(clean), size=15, replace=False)
    assert data.ids == sorted(BLOCK_IDS + [clean[i] for i in drawn[:12]])
    assert [sid for sid, h in zip(data.ids, data.has_ich, strict=True) if h] == BLOCK_IDS
    assert np.array_equal(data.masks.any(axis=(1, 2)), data.has_ich)
    counts = data.meta["counts"]
    assert (counts["n_slices"], counts["n_ich"], counts["n_clean"]) == (24, 12, 12)
    assert counts["lost_to_resize"] == 3
    # Subtype counts are those of the slices kept: the blocks' (patient % 5), no subarachnoid.
    blocks = {SUBTYPES[p % 5]: len(ICH_SLICES) for p in ICH_PATIENTS}
    assert counts["subtypes"] == {name: blocks.get(name, 0) for name in SUBTYPES}
    listed = set(data.splits["test"])
    for fold in data.splits["folds"]:
        listed |= set(fold["train"]) | set(fold["val"])
    assert listed == set(data.ids)


def test_without_specks_nothing_is_lost_or_said(tmp_path, capsys):
    root = write_tiny_release(tmp_path / "release", size=128)
    code, err = _prepare(root, tmp_path / "cache", capsys)
    assert (code, err) == (0, [])
    (cache,) = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    lost = load_prepared(cache).meta["lost_to_resize"]
    assert (lost["n_slices"], lost["slice_ids"]) == (0, [])


def test_folds_the_kept_slices_cannot_fill_are_refused_saying_why(release, tmp_path, capsys):
    # 15 labelled slices leave 12 outside the test set, 12 kept ones only 10: 12 folds fail
    # only once the volumes are read.
    code, err = _prepare(release, tmp_path / "cache", capsys, "--n-folds", "12")
    assert code == 2 and len(err) == 1
    assert err[0].startswith("ichseg prepare: error: split: expected at least 12 slices"), err
    assert err[0].endswith(
        "found 10, once the 3 slices labelled hemorrhage with no bleed pixel left at 48 px are "
        "left out"
    ), err
    assert not (tmp_path / "cache").exists()


def test_a_release_whose_every_bleed_is_lost_is_refused(tmp_path, capsys):
    root = write_tiny_release(tmp_path / "release", size=128, ich_patients=(), specks=SPECKS)
    code, err = _prepare(root, tmp_path / "cache", capsys, "--n-folds", "2")
    assert code == 2 and len(err) == 1
    assert err[0] == (
        f"ichseg prepare: error: {root} (physionet): expected hemorrhage slices to balance, "
        "found none with a bleed pixel left at 48 px (the resize emptied the masks of all 3); "
        "prepare at a larger size"
    )


def test_a_cache_whose_labels_disagree_with_its_masks_is_refused(release, tmp_path, capsys):
    """A cache built before the rule kept slices whose mask the resize emptied as positives."""
    assert _prepare(release, tmp_path / "cache", capsys)[0] == 0
    (cache,) = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    old = shutil.copytree(cache, tmp_path / "old")
    data = load_prepared(cache)
    row = data.ids.index(BLOCK_IDS[0])
    masks = data.masks.copy()
    masks[row] = False
    np.save(old / "masks.npy", masks)
    with pytest.raises(IchsegError) as err:
        load_prepared(old)
    assert str(err.value).startswith(
        f"{old / 'index.csv'}: expected has_ich=1 exactly where masks.npy holds a bleed pixel, "
        f"found row {row} ({BLOCK_IDS[0]}) with has_ich=1 and an empty mask (1 such rows"
    )


def _module(release: Path, cache_root: Path, fold: int = 0) -> ICHDataModule:
    return ICHDataModule(
        fold=fold,
        source=PhysioNet(root=str(release)),
        cache_root=str(cache_root),
        size=48,
        n_folds=3,
        test_fraction=0.2,
        batch_size=8,
    )


def test_training_never_sees_a_lost_slice_and_the_job_log_names_them(release, tmp_path, caplog):
    dm = _module(release, tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="ichseg"):
        dm.prepare_data()
    lines = [r.getMessage() for r in caplog.records if r.name == "ichseg"]
    assert len(lines) == 1 and lines[0].startswith(f"{dm._ensure_cache()}: 3 slices labelled")
    dm.setup("fit")
    for rows in (dm.train_rows, dm.val_rows, dm.test_rows):
        assert not set(dm.row_ids(rows)) & set(SPECK_IDS)
        bleeding = dm.masks[rows].flatten(1).any(dim=1).numpy()
        assert np.array_equal(bleeding, dm.row_subtypes(rows).any(axis=1))


def _scored_sweep(tmp_path: Path, data: dict, dm: ICHDataModule) -> list[SliceResult]:
    """evaluate_slices of a two-fold sweep of untrained networks on `dm`'s cache."""
    sweep = make_sweep(
        tmp_path / "sweep",
        models=("dunet",),
        folds=[0, 1],
        fold_override="0,1",
        max_epochs=100,
        data=data,
        cache_dir=dm.cache_dir,
    )
    for fold in (0, 1):
        torch.manual_seed(fold)
        module = SegmentationModule(net=unet_config((4, 8, 16, 32, 64), True, 0.2))
        path = sweep / f"dunet-fold{fold}" / "checkpoints" / "epoch=0100.ckpt"
        write_checkpoint(path, module.hparams, module.state_dict())
    found = collect_sweep(sweep)
    return evaluate_slices(found, select(table_rows(found, "paper"), "paper"), 6, "cpu")


@pytest.mark.parametrize("layout", ["physionet", "instance22"])
def test_subsets_and_captions_go_by_the_resized_mask(release, tmp_path, layout):
    """Specks lost at 48 px (PhysioNet's CSV), and bleeds without a subtype (INSTANCE 2022)."""
    if layout == "physionet":
        source = {"_target_": "ichseg.data.sources.PhysioNet", "root": str(release)}
        data = {"size": 48, "n_folds": 3, "test_fraction": 0.2}
    else:
        phantom = {"root": str(tmp_path / "ph"), "patients": 6, "size": 64, "layout": layout}
        source = {"_target_": "ichseg.data.sources.Phantom", **phantom}
        data = {"size": 32, "n_folds": 2}
    data |= {
        "_target_": "ichseg.data.datamodule.ICHDataModule",
        "source": source,
        "cache_root": str(tmp_path / "cache"),
    }
    dm = instantiate(OmegaConf.create({**data, "fold": 0}))
    dm.setup("test")
    results = _scored_sweep(tmp_path, data, dm)
    rows = dm.test_rows
    bleeding = dm.masks[rows].flatten(1).any(dim=1).numpy()
    subtypes = dm.row_subtypes(rows).astype(bool)
    assert bleeding.any() and (~bleeding).any()
    for result in results:
        expected = {name: int(subtypes[:, i].sum()) for i, name in enumerate(SUBTYPES)}
        assert result.subtype_counts == {**expected, NO_HEMORRHAGE: int((~bleeding).sum())}
        shown = [ex.slice_id for ex in result.examples]
        assert not set(shown) & set(SPECK_IDS)
        # Every bleeding test slice is a candidate, with or without a subtype label.
        assert any(ex.mask.any() for ex in result.examples)
        for ex in result.examples:
            row = dm.row_ids(rows).index(ex.slice_id)
            names = tuple(s for s, flag in zip(SUBTYPES, subtypes[row], strict=True) if flag)
            want = (", ".join(names) or "ICH, no subtype") if bleeding[row] else "no ICH"
            assert ex.caption == want


def test_overlay_captions_say_what_the_truth_shows(tmp_path, monkeypatch):
    bleed = np.zeros((32, 32), bool)
    bleed[10:14, 10:14] = True
    empty = np.zeros((32, 32), bool)
    examples = [
        SliceExample("001_10", np.zeros((32, 32)), bleed, empty, ("Subdural",)),
        SliceExample("001_11", np.zeros((32, 32)), bleed, empty, ()),
        SliceExample("001_02", np.zeros((32, 32)), empty, empty, ()),
    ]
    result = SliceResult("dunet", "D-Unet", 5, "best fold (0)", 3, {}, {}, {}, examples)
    drawn = {}
    monkeypatch.setattr(
        "ichseg.report.figures.save_png", lambda fig, path: drawn.setdefault("fig", fig)
    )
    assert draw_overlays(result, tmp_path / "overlays.png")
    shown = [" ".join(t.get_text().split()) for t in titles(drawn["fig"])]
    for caption in ("001_10 Subdural", "001_11 ICH, no subtype", "001_02 no ICH"):
        assert caption in shown, shown
