"""Whole-scan prediction and patient-level evaluation on tiny synthetic scans and networks."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ichseg.checkpoint import (
    Preprocess,
    load_checkpoint,
    write_checkpoint,
)
from ichseg.cli import main
from ichseg.data.phantom import write_phantom
from ichseg.data.prepare import PrepareConfig, prepare
from ichseg.data.release import PhysioNetRelease
from ichseg.data.transforms import window
from ichseg.inference.ensemble import Ensemble
from ichseg.inference.run import predict_scans
from ichseg.inference.volume_metrics import dice_3d
from ichseg.inference.volumes import VolumeEnsemble
from ichseg.models.unet import unet_config
from ichseg.scans import Scan, open_scan
from ichseg.training.module import SegmentationModule
from tests.helpers.checkpoints import (
    FILTERS,
    PRE,
    PRE64,
    passthrough_module,
    random_module,
    save_checkpoint,
    split_of,
)
from tests.helpers.scans import save_scan, with_air

GEOMETRY_KEYS = (
    "dim",
    "pixdim",
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "xyzt_units",
)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def boxes_volume() -> tuple[np.ndarray, np.ndarray]:
    """64×64×6 HU volume: brain (30 HU) beside air (-1000 HU, the first three columns) with two
    bleeds (200 HU), and the bleeds' mask.

    Bleed 1 spans slices 2-3 and touches a third box on slice 4 only by a corner (one
    26-connected bleed); bleed 2 lies apart on slice 6. Asymmetric, so a wrong rotation shows.
    """
    mask = np.zeros((64, 64, 6), dtype=bool)
    mask[10:20, 30:34, 1:3] = True  # 10 × 4 × 2 = 80
    mask[20:23, 34:36, 3] = True  # corner-touching (19, 33, 2) -> (20, 34, 3): 3 × 2 = 6
    mask[40:45, 5:15, 5] = True  # 5 × 10 = 50
    hu = np.where(mask, 200.0, 30.0)
    hu[:, :3] = -1000.0
    return hu, mask


def test_known_mask_volume_slices_and_bleeds(ckpts, tmp_path, capsys):
    hu, mask = boxes_volume()
    scan = save_scan(tmp_path / "head.nii", hu)
    code, out, err = run_cli(
        ["predict", ckpts["pass"], scan, "-o", tmp_path / "out", "--precision", "fp32"], capsys
    )
    assert code == 0, err
    predicted = nib.load(tmp_path / "out" / "head_mask.nii.gz")
    assert np.array_equal(np.asarray(predicted.dataobj), mask.astype(np.uint8))
    summary = json.loads((tmp_path / "out" / "head.json").read_text())
    voxel_ml = 0.5 * 0.4 * 5.0 / 1000
    assert summary["bleed_voxels"] == 136
    assert math.isclose(summary["bleed_volume_ml"], 136 * voxel_ml, rel_tol=1e-6)
    assert summary["slices_with_hemorrhage"] == [2, 3, 4, 6]
    assert summary["n_bleeds"] == 2
    assert [(b["voxels"], b["slices"]) for b in summary["bleeds"]] == [(86, [2, 4]), (50, [6, 6])]
    assert summary["precision"] == "fp32"
    assert f"{136 * voxel_ml:.2f} mL" in out


@pytest.mark.reliability(
    case="scan whose last axis is coronal",
    did="the axial boxes scan stored with its axes (0, 2, 1) and the affine saying so",
    entry="ichseg predict",
)
def test_a_scan_is_sliced_along_its_axial_axis_whatever_its_axis_order(
    ckpts, tmp_path, capsys, record_behaviour
):
    hu, mask = boxes_volume()
    axial = np.diag([-0.5, 0.4, 5.0, 1.0])
    save_scan(tmp_path / "axial.nii", hu, axial)
    save_scan(tmp_path / "coronal.nii", hu.transpose(0, 2, 1), axial[:, [0, 2, 1, 3]])
    code, out, err = run_cli(
        [
            "predict",
            ckpts["pass"],
            tmp_path / "axial.nii",
            tmp_path / "coronal.nii",
            "-o",
            tmp_path / "out",
            "--precision",
            "fp32",
        ],
        capsys,
    )
    assert code == 0, err
    summaries = {
        n: json.loads((tmp_path / "out" / f"{n}.json").read_text()) for n in ("axial", "coronal")
    }
    masks = {
        n: np.asarray(nib.load(tmp_path / "out" / f"{n}_mask.nii.gz").dataobj)
        for n in ("axial", "coronal")
    }
    np.testing.assert_array_equal(masks["axial"], mask)
    # The mask comes back in the coronal file's own grid, and the numbers are the axial scan's.
    np.testing.assert_array_equal(masks["coronal"], mask.transpose(0, 2, 1))
    for key in ("bleed_volume_ml", "slices_with_hemorrhage", "n_bleeds", "voxel_mm"):
        assert summaries["coronal"][key] == summaries["axial"][key], key
    assert (summaries["axial"]["axial_axis"], summaries["axial"]["reoriented"]) == (2, False)
    assert (summaries["coronal"]["axial_axis"], summaries["coronal"]["reoriented"]) == (1, True)
    line = next(row for row in out.splitlines() if "coronal" in row)
    record_behaviour(f"exit 0, same mL and axial slices as the axial original: {line}")


@pytest.mark.reliability(
    case="affine with no clear axial axis",
    did="an affine rotated 45 degrees about the left-right axis",
    entry="ichseg predict",
)
def test_a_scan_without_a_clear_axial_axis_is_refused(ckpts, tmp_path, capsys, record_behaviour):
    hu, _ = boxes_volume()
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    affine = np.diag([0.5, 0.4, 5.0, 1.0])
    affine[1:3, 1:3] = [[0.4 * c, -5 * s], [0.4 * s, 5 * c]]
    scan = save_scan(tmp_path / "oblique45.nii", hu, affine)
    out = tmp_path / "out"
    line = _assert_refused(
        ["predict", ckpts["pass"], scan, "-o", out],
        capsys,
        out,
        "oblique45.nii",
        "45 degrees from the patient's",
        "cannot tell which array axis is axial",
    )
    record_behaviour(f"exit 2, nothing written: {line}")


def test_output_geometry_equals_input(ckpts, tmp_path, capsys):
    # Non-square, oblique, qform and sform differing, resized 64×48 -> 32×32 and back.
    hu = with_air(np.full((64, 48, 4), 30.0))
    hu[8:40, 10:22, 1:3] = 200.0
    affine = np.array(
        [[-0.45, 0.02, 0.0, 90.0], [0.01, 0.45, 0.1, -80.0], [0.0, -0.03, 5.0, -40.0], [0, 0, 0, 1]]
    )
    image = nib.Nifti1Image(np.rint(hu).astype(np.int16), affine)
    image.header.set_qform(np.diag([-0.45, 0.45, 5.0, 1.0]), code=1)
    image.header.set_sform(affine, code=2)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, tmp_path / "oblique.nii.gz")
    four_d = nib.Nifti1Image(np.rint(hu).astype(np.int16)[..., None], affine)
    nib.save(four_d, tmp_path / "single_volume.nii")
    code, _, err = run_cli(
        [
            *("predict", ckpts["pass32"], tmp_path / "oblique.nii.gz"),
            *(tmp_path / "single_volume.nii", "-o", tmp_path / "out", "--precision", "fp32"),
        ],
        capsys,
    )
    assert code == 0, err
    for name in ("oblique", "single_volume"):
        scan = nib.load(tmp_path / f"{name}.nii{'.gz' if name == 'oblique' else ''}")
        result = nib.load(tmp_path / "out" / f"{name}_mask.nii.gz")
        assert result.shape == scan.shape
        assert np.allclose(result.affine, scan.affine, atol=0, rtol=0)
        assert result.header.get_zooms() == scan.header.get_zooms()
        for key in GEOMETRY_KEYS:
            assert np.array_equal(result.header[key], scan.header[key]), key
        assert result.get_data_dtype() == np.uint8
        data = np.asarray(result.dataobj).reshape(hu.shape)
        assert set(np.unique(data)) <= {0, 1}
        # The round trip through 32×32 keeps the box in place (a wrong rotation would not).
        truth = hu > 100
        assert 2 * np.sum(data & truth) / (data.sum() + truth.sum()) > 0.9


def test_ensembling_and_flip_change_nothing_where_they_should_not(ckpts, tmp_path):
    rng = np.random.default_rng(3)
    hu = rng.uniform(-20, 100, (32, 32, 5))
    hu = with_air((hu + hu[::-1]) / 2)  # mirrored upright slices are the same slices
    scan = open_scan(save_scan(tmp_path / "sym.nii", hu))
    hu = scan.read_hu()
    cpu = torch.device("cpu")

    def mask(paths, flip=False):
        return VolumeEnsemble.load(paths, cpu, flip=flip, precision="fp32").predict(hu)

    single = mask([ckpts["a"]])
    assert 0 < single.sum() < single.size  # a non-trivial prediction to compare
    copy = tmp_path / "copy.ckpt"
    shutil.copy(ckpts["a"], copy)
    assert np.array_equal(mask([ckpts["a"], copy]), single)
    # A network with mirrored kernels commutes with the flip: TTA is the identity.
    sym = mask([ckpts["sym"]])
    assert 0 < sym.sum() < sym.size
    assert np.array_equal(mask([ckpts["sym"]], flip=True), sym)
    assert np.array_equal(sym, sym[::-1])  # a symmetric input gives a symmetric mask
    # Where they should change something, they average probabilities.
    x = VolumeEnsemble.load([ckpts["a"]], cpu, precision="fp32").slices(hu)

    def probabilities(paths, flip=False):
        ensemble = Ensemble.load(paths, cpu, flip=flip, batch_size=2, precision="fp32")
        return torch.cat(list(ensemble.probabilities(x)))

    p_a, p_b = probabilities([ckpts["a"]]), probabilities([ckpts["b"]])
    assert p_a.shape == x.shape
    both = probabilities([ckpts["a"], ckpts["b"]])
    assert torch.allclose(both, (p_a + p_b) / 2, atol=1e-6)
    flipped = probabilities([ckpts["a"]], flip=True)
    assert torch.allclose(flipped, (p_a + p_a.flip(-1)) / 2, atol=1e-6)


def test_bf16_agrees_with_fp32(ckpts, tmp_path):
    hu = np.random.default_rng(4).uniform(-20, 100, (32, 32, 4))
    cpu = torch.device("cpu")
    fp32 = VolumeEnsemble.load([ckpts["a"]], cpu, precision="fp32").predict(hu)
    bf16 = VolumeEnsemble.load([ckpts["a"]], cpu, precision="bf16").predict(hu)
    assert np.mean(fp32 == bf16) > 0.99


def test_batch_norm_folding_keeps_outputs(ckpts):
    module = random_module(0)
    module.eval()
    x = torch.rand(3, 1, 32, 32)
    (net,) = Ensemble.load([ckpts["a"]], torch.device("cpu")).nets
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    with torch.no_grad():
        assert torch.allclose(net(x), module(x), atol=1e-4)


class _TinyData(pl.LightningDataModule):
    """Two 32×32 slices; `prepare_config` as ICHDataModule has it."""

    def __init__(self) -> None:
        super().__init__()
        self.prepare_config = PrepareConfig(size=32, level=35.0, width=90.0)

    def _loader(self) -> DataLoader:
        batch = {"image": torch.rand(2, 1, 32, 32), "mask": torch.zeros(2, 1, 32, 32)}
        return DataLoader([batch], batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


def test_trained_checkpoint_carries_preprocessing_and_config_fallback(tmp_path):
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(SegmentationModule(net=unet_config(FILTERS, True)), datamodule=_TinyData())
    path = tmp_path / "trained.ckpt"
    trainer.save_checkpoint(path)
    preprocess, source = load_checkpoint(path).preprocess()
    assert preprocess == Preprocess(size=32, level=35.0, width=90.0, intensity="linear")
    assert source == "checkpoint"
    # An older checkpoint without the key: the job's config.yaml next to checkpoints/.
    job = tmp_path / "dunet-fold0"
    old = save_checkpoint(random_module(), job / "checkpoints" / "epoch=0001.ckpt", None)
    (job / "config.yaml").write_text(
        "data:\n  size: 32\n  window_level: 50.0\n  window_width: 80\n"
    )
    preprocess, source = load_checkpoint(old).preprocess()
    assert (preprocess.level, preprocess.width) == (50.0, 80.0)
    assert source == str(job / "config.yaml")


def _assert_refused(argv, capsys, outdir: Path, *needles: str) -> str:
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ichseg predict: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not outdir.exists() or not any(outdir.iterdir())
    return lines[0]


def test_bad_inputs_fail_with_one_line_and_write_nothing(ckpts, tmp_path, capsys):
    good = save_scan(tmp_path / "good.nii", with_air(np.full((32, 32, 3), 30.0)))
    out = tmp_path / "out"
    fp32 = ["-o", out, "--precision", "fp32"]
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    _assert_refused(["predict", ckpts["a"], good, text, *fp32], capsys, out, str(text), ".nii")
    fake = tmp_path / "fake.nii"
    fake.write_text("not an image either\n" * 40)
    _assert_refused(["predict", ckpts["a"], fake, *fp32], capsys, out, str(fake), "NIfTI")
    flat = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.int16), np.eye(4)), flat)
    _assert_refused(["predict", ckpts["a"], good, flat, *fp32], capsys, out, str(flat), "3-D")
    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 3, 2), np.int16), np.eye(4)), series)
    _assert_refused(
        ["predict", ckpts["a"], good, series, *fp32], capsys, out, str(series), "(32, 32, 3, 2)"
    )

    foreign = tmp_path / "resnet.ckpt"  # another project's checkpoint, not ichseg's schema
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "epoch": 3}, foreign)
    _assert_refused(["predict", foreign, good, *fp32], capsys, out, str(foreign), "SegmentationM")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 not a pickle")
    _assert_refused(["predict", junk, good, *fp32], capsys, out, str(junk), "PyTorch")
    wide = save_checkpoint(SegmentationModule(net=unet_config((4, 8, 32))), tmp_path / "wide.ckpt")
    # Networks of different architectures average, as long as they see the same inputs.
    mixed = tmp_path / "mixed"
    argv = ["predict", ckpts["a"], wide, good, "-o", mixed, "--precision", "fp32"]
    assert run_cli(argv, capsys)[0] == 0
    assert (mixed / "good.json").is_file()
    other_window = save_checkpoint(
        random_module(), tmp_path / "w.ckpt", dataclasses.replace(PRE, width=80.0)
    )
    _assert_refused(
        ["predict", ckpts["a"], other_window, good, *fp32], capsys, out, "preprocess", "w.ckpt"
    )
    wide_module = SegmentationModule(net=unet_config((4, 8, 32)))
    lying = {**wide_module.hparams, "net": unet_config(FILTERS)}
    write_checkpoint(tmp_path / "lying.ckpt", lying, wide_module.state_dict(), preprocess=PRE)
    _assert_refused(
        ["predict", tmp_path / "lying.ckpt", good, *fp32], capsys, out, "do not fit", "lying.ckpt"
    )
    bare = save_checkpoint(random_module(), tmp_path / "bare" / "x.ckpt", None)
    _assert_refused(["predict", bare, good, *fp32], capsys, out, "ichseg_preprocess", "config.yaml")

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should go\n")
    _assert_refused(
        ["predict", ckpts["a"], good, "-o", blocker / "out"], capsys, blocker / "out", str(blocker)
    )
    _assert_refused(["predict", ckpts["a"], good, "-o", blocker], capsys, out, str(blocker))
    assert blocker.read_text().startswith("a file")


def test_missing_or_folder_inputs_are_one_line_naming_them(ckpts, tmp_path, capsys):
    good = save_scan(tmp_path / "good.nii", with_air(np.full((32, 32, 3), 30.0)))
    out = tmp_path / "out"
    fp32 = ["-o", out, "--precision", "fp32"]
    gone_scan, gone_ckpt = tmp_path / "gone.nii.gz", tmp_path / "gone.ckpt"
    folder_ckpt = tmp_path / "folder.ckpt"
    folder_ckpt.mkdir()
    line = _assert_refused(["predict", ckpts["a"], gone_scan, *fp32], capsys, out, "scan")
    assert line.endswith(f"scan {gone_scan}: expected a NIfTI file, found nothing"), line
    line = _assert_refused(["predict", gone_ckpt, good, *fp32], capsys, out, "checkpoint")
    assert line.endswith(f"checkpoint {gone_ckpt}: expected a checkpoint file, found nothing")
    line = _assert_refused(["predict", folder_ckpt, good, *fp32], capsys, out, "checkpoint")
    assert line.endswith(f"checkpoint {folder_ckpt}: expected a checkpoint file, found a folder")


@pytest.fixture(scope="module")
def patient_release(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("release")
    release = write_phantom(root / "phantom", patients=12, size=64, seed=0)
    cache = prepare(release, root / "cache", PrepareConfig(size=64, split="patient", n_folds=2))
    return release, cache


def test_evaluate_matches_an_independent_computation(patient_release, tmp_path, capsys):
    release_root, cache = patient_release
    out = tmp_path / "eval"
    # What training records in a checkpoint: the split it trained on (fold 0 of this cache).
    split = split_of(cache)
    ckpt = save_checkpoint(passthrough_module(), tmp_path / "pass.ckpt", PRE64, split=split)
    code, stdout, err = run_cli(
        [
            *("evaluate", ckpt, "--release", release_root, "--splits", cache),
            *("-o", out, "--precision", "fp32"),
        ],
        capsys,
    )
    assert code == 0, err
    splits = json.loads((cache / "splits.json").read_text())
    patients = sorted({int(sid[:3]) for sid in splits["test"]})
    release = PhysioNetRelease.open(release_root)
    with open(out / "patients.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["patient"]) for r in rows] == patients
    truth_flags, pred_flags, dices = [], [], []
    for row, patient in zip(rows, patients, strict=True):
        volume = release.load_patient(patient)
        # The pass-through network predicts the 8-bit windowed pixels above one half.
        pred = np.rint(window(volume.hu, 40.0, 120.0) * 255) >= 128
        voxel_ml = np.prod(volume.zooms) / 1000
        error = (pred.sum() - volume.mask.sum()) * voxel_ml
        assert math.isclose(float(row["volume_error_ml"]), error, rel_tol=1e-4, abs_tol=1e-6)
        both = pred.sum() + volume.mask.sum()
        dice = 2 * np.sum(pred & volume.mask) / both if both else math.nan
        assert math.isclose(float(row["dice_3d"]), dice, rel_tol=1e-4) or (
            math.isnan(dice) and row["dice_3d"] == "nan"
        )
        truth_flags.append(volume.mask.any())
        pred_flags.append(pred.any())
        dices.append(dice)
    summary = json.loads((out / "summary.json").read_text())
    t, p = np.array(truth_flags), np.array(pred_flags)
    assert summary["patient_counts"] == {
        "tp": int(np.sum(t & p)),
        "fn": int(np.sum(t & ~p)),
        "tn": int(np.sum(~t & ~p)),
        "fp": int(np.sum(~t & p)),
    }
    assert math.isclose(summary["dice_3d_mean"], np.nanmean(dices), rel_tol=1e-9)
    assert f"{len(patients)} test patients" in stdout


def test_dice_3d_is_nan_only_when_both_are_empty():
    empty = np.zeros((4, 4, 2), dtype=bool)
    some = empty.copy()
    some[1, 1, 0] = True
    assert math.isnan(dice_3d(empty, empty))
    assert dice_3d(some, empty) == 0.0
    assert dice_3d(some, some) == 1.0


def test_evaluate_refuses_a_slice_split(ckpts, patient_release, tmp_path, capsys):
    release_root, _ = patient_release
    cache = prepare(release_root, tmp_path / "cache", PrepareConfig(size=64, n_folds=2))
    out = tmp_path / "eval"
    code, _, err = run_cli(
        ["evaluate", ckpts["pass"], "--release", release_root, "--splits", cache, "-o", out],
        capsys,
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "'slice'" in err and "patient" in err
    assert not out.exists()


def test_predict_scans_api_reports_each_scan(ckpts, tmp_path):
    hu, mask = boxes_volume()
    scans = [save_scan(tmp_path / f"s{i}.nii.gz", hu) for i in range(2)]
    seen = []
    done = predict_scans(
        [ckpts["pass"]], scans, tmp_path / "o", precision="fp32", on_scan=seen.append
    )
    assert [s["scan"] for s in seen] == [str(p) for p in scans] == [s["scan"] for s in done]
    assert all(s["bleed_voxels"] == mask.sum() for s in done)


def test_every_scan_is_checked_first_and_the_first_is_read_once(ckpts, tmp_path, monkeypatch):
    hu, mask = boxes_volume()
    scans = [save_scan(tmp_path / f"s{i}.nii.gz", hu) for i in range(3)]
    reads = []
    read_hu = Scan.read_hu

    def counted(scan, *args, **kwargs):
        reads.append(scan.path.name)
        return read_hu(scan, *args, **kwargs)

    monkeypatch.setattr(Scan, "read_hu", counted)
    done = predict_scans([ckpts["pass"]], scans[:1], tmp_path / "one", precision="fp32")
    assert reads == ["s0.nii.gz"] and done[0]["bleed_voxels"] == mask.sum()
    reads.clear()
    done = predict_scans([ckpts["pass"]], scans, tmp_path / "three", precision="fp32")
    # All three checked before the first mask is written, then s1 and s2 read for prediction.
    assert reads == ["s0.nii.gz", "s1.nii.gz", "s2.nii.gz", "s1.nii.gz", "s2.nii.gz"]
    assert [s["bleed_voxels"] for s in done] == [mask.sum()] * 3


@pytest.mark.reliability(entry="ichseg predict")
@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (1, 1, 3), (2, 2, 1), (64, 1, 4), (1, 48, 2), (15, 64, 3)]
)
def test_scans_too_small_in_plane_are_refused(shape, ckpts, tmp_path, capsys, record_behaviour):
    scan = save_scan(tmp_path / "tiny.nii", np.full(shape, 30.0))
    code, _, err = run_cli(["predict", ckpts["a"], scan, "-o", tmp_path / "out"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "too small to be a CT scan" in lines[0], err
    assert "tiny.nii" in lines[0] and "16x16" in lines[0]
    assert not (tmp_path / "out").exists()
    record_behaviour(f"exit 2: {lines[0]}", case=f"scan {shape}")


@pytest.mark.reliability(case="scan with 0 slices", entry="ichseg predict")
def test_scan_without_slices_is_one_line(ckpts, tmp_path, capsys, record_behaviour):
    scan = tmp_path / "empty.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 0), np.int16), np.eye(4)), scan)
    out = tmp_path / "out"
    _assert_refused(["predict", ckpts["a"], scan, "-o", out], capsys, out, "empty.nii", "non-empty")
    record_behaviour("exit 2, nothing written: expected a non-empty volume")


@pytest.mark.reliability(entry="ichseg predict --device")
@pytest.mark.parametrize("device", ["mps", "meta", "tpu"])
def test_a_device_ichseg_cannot_compute_on_is_one_line(
    device, ckpts, tmp_path, capsys, record_behaviour
):
    """mps (not in this build) and meta (no data) parse as devices but fail mid-prediction."""
    good = save_scan(tmp_path / "good.nii", with_air(np.full((32, 32, 3), 30.0)))
    out = tmp_path / "out"
    line = _assert_refused(
        ["predict", ckpts["a"], good, "-o", out, "--device", device], capsys, out
    )
    assert (
        line
        == f"ichseg predict: error: --device {device}: expected auto, cpu, cuda or cuda:<index>"
    )
    record_behaviour(f"exit 2, nothing written: {line}", case=f"predict --device {device}")
