"""`ichseg evaluate --source --root`: every volume of another layout, scored independently."""

from __future__ import annotations

import csv
import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest

from ichseg.cli import main
from ichseg.data.phantom import write_phantom
from ichseg.data.sources import BHSD, Instance22
from ichseg.data.transforms import window
from tests.helpers.checkpoints import PRE, passthrough_module, save_checkpoint
from tests.unit.test_volume_metrics import reference_hd95, reference_nsd


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    ckpt = save_checkpoint(passthrough_module(), root / "pass.ckpt", PRE)
    layouts = {
        name: write_phantom(root / name, patients=6, size=32, seed=2, layout=name)
        for name in ("bhsd", "instance22")
    }
    return ckpt, layouts


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _close(found: str, expected: float) -> bool:
    if math.isnan(expected):
        return found == "nan"
    return math.isclose(float(found), expected, rel_tol=1e-4, abs_tol=1e-6)


@pytest.mark.reliability(
    case="external validation on another layout",
    did="a checkpoint evaluated on every volume of a BHSD-layout phantom, each score recomputed "
    "with numpy/scipy",
    entry="ichseg evaluate --source bhsd --root",
)
def test_external_scores_match_an_independent_computation(
    external, tmp_path, capsys, record_behaviour
):
    ckpt, layouts = external
    out = tmp_path / "eval"
    argv = ["evaluate", ckpt, "--source", "bhsd", "--root", layouts["bhsd"], "-o", out]
    code, stdout, err = _run([*argv, "--precision", "fp32", "--nsd-tolerance-mm", "3"], capsys)
    assert code == 0, err
    release = BHSD(str(layouts["bhsd"])).open()
    with open(out / "patients.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case"] for r in rows] == [release.case_name(p) for p in release.patients]
    dices = []
    for row, patient in zip(rows, release.patients, strict=True):
        volume = release.load_patient(patient)
        # The pass-through network predicts the 8-bit windowed pixels above one half.
        pred = np.rint(window(volume.hu, 40.0, 120.0) * 255) >= 128
        truth, spacing = volume.mask, volume.zooms
        p, t = int(pred.sum()), int(truth.sum())
        dice = 2 * np.sum(pred & truth) / (p + t) if p + t else math.nan
        assert _close(row["dice_3d"], dice)
        assert _close(row["rvd"], (p - t) / t if t else math.nan)
        assert _close(row["volume_error_ml"], (p - t) * np.prod(spacing) / 1000)
        hd = reference_hd95(pred, truth, spacing) if p and t else math.nan
        assert _close(row["hd95_mm"], hd)
        surface = reference_nsd(pred, truth, spacing, 3.0) if p and t else 0.0
        assert _close(row["nsd"], surface)
        dices.append(dice)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "external" and summary["source"]["name"] == "bhsd"
    assert summary["source"]["volumes"] == 6 and summary["nsd_tolerance_mm"] == 3.0
    assert math.isclose(summary["dice_3d_mean"], np.nanmean(dices), rel_tol=1e-9)
    subtypes = {name for r in rows for name in r["subtypes"].split(";") if name}
    assert set(summary["per_subtype"]) == subtypes
    assert (out / "dice_vs_volume.png").stat().st_size > 1000
    assert "6 volumes of BHSD" in stdout
    record_behaviour(f"exit 0; {stdout.strip()}")


def test_a_source_without_subtypes_has_no_subtype_table(external, tmp_path, capsys):
    ckpt, layouts = external
    argv = ["evaluate", ckpt, "--source", "instance22", "--root", layouts["instance22"]]
    code, _, err = _run([*argv, "-o", tmp_path / "e", "--precision", "fp32"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["per_subtype"] is None
    assert summary["n_patients"] == len(Instance22(str(layouts["instance22"])).open().patients)


def test_evaluate_refuses_unclear_modes_and_wrong_layouts(external, tmp_path, capsys):
    ckpt, layouts = external
    out = tmp_path / "e"
    for extra, message in (
        ([], "give --splits CACHE"),
        (["--source", "bhsd"], "--source and --root go together"),
        (["--source", "bhsd", "--root", layouts["instance22"]], "not a BHSD folder: expected"),
    ):
        code, _, err = _run(["evaluate", ckpt, *extra, "-o", out], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_binary_export_is_scored_without_subtypes_only_when_said(external, tmp_path, capsys):
    """Masks of 0/1 in the BHSD layout: refused as they would make every bleed epidural; with
    --binary-labels scored as hemorrhage, with no subtype anywhere."""
    ckpt, layouts = external
    root = shutil.copytree(layouts["bhsd"], tmp_path / "binary")
    (root / "phantom.json").unlink()
    for path in (root / "label_192" / "ground truths").iterdir():
        image = nib.load(path)
        binary = (np.asarray(image.dataobj) > 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(binary, image.affine, image.header), path)
    out = tmp_path / "e"
    argv = ["evaluate", ckpt, "--source", "bhsd", "--root", root, "-o", out, "--precision", "fp32"]
    code, _, err = _run(argv, capsys)
    assert (
        code == 2 and len(err.strip().splitlines()) == 1 and "hold only the labels 0 and 1" in err
    )
    assert not out.exists()
    code, _, err = _run([*argv, "--binary-labels"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_subtype"] is None and summary["source"]["subtypes_from"] is None
    with open(out / "patients.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and all(r["subtypes"] == "" for r in rows)
    expected = [
        int((np.asarray(nib.load(p).dataobj) > 0).sum())
        for p in sorted((root / "label_192" / "ground truths").iterdir())
    ]
    assert [int(r["true_voxels"]) for r in rows] == expected
