"""`ichseg evaluate --source --root`: every volume of another layout, scored independently."""

from __future__ import annotations

import csv
import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from ichseg.cli import main
from ichseg.data.phantom import write_phantom
from ichseg.data.sources import BHSD, Instance22
from ichseg.data.transforms import window
from ichseg.inference.volume_agreement import agreement
from tests.helpers.checkpoints import PRE, passthrough_module, save_checkpoint
from tests.helpers.scans import save_scan, with_air
from tests.unit import test_volume_metrics
from tests.unit.test_volume_metrics import blob, official_scores, reference_hd95, reference_nsd

deepmind = test_volume_metrics.deepmind  # the fixture: DeepMind's surface-distance package


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
    # Each subtype's volume agreement is over its own volumes with a bleed.
    for name in subtypes:
        members = [r for r in rows if name in r["subtypes"].split(";")]
        truth_ml = [float(r["true_ml"]) for r in members if int(r["true_voxels"])]
        estimate = [float(r["abc2_true_ml"]) for r in members if int(r["true_voxels"])]
        found = summary["per_subtype"][name]["volume_agreement"]["abc2_true"]
        assert found["n"] == len(truth_ml)
        assert math.isclose(found["mae_ml"], agreement(truth_ml, estimate)["mae_ml"], rel_tol=1e-4)
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


# --- Volume protocols, precision and volume agreement, through `ichseg evaluate` -------------

SPACING = (0.43, 0.57, 4.8)  # anisotropic, as the label's header says
BLEED_HU, BRAIN_HU = 60.0, 20.0  # the pass-through network predicts 60 HU, not 20
BOX = tuple[slice, slice, slice]


def _box_mask(shape, boxes: list[BOX]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for box in boxes:
        mask[box] = True
    return mask


# Per case: true mask, voxels the scan makes bright (the prediction), in the file's axes.
SHAPE = (32, 32, 6)
_BLOB = blob(SHAPE, (16, 16, 2.5), (7, 5, 2))
CASES = {
    # A box with one half-area slice above it, and a box predicted beside it.
    "001": (
        _box_mask(SHAPE, [np.s_[10:16, 8:20, 1:4], np.s_[10:13, 8:20, 4]]),
        _box_mask(SHAPE, [np.s_[11:18, 9:19, 1:5]]),
    ),
    "002": (np.zeros(SHAPE, bool), _box_mask(SHAPE, [np.s_[5:9, 5:12, 2:4]])),  # false alarm
    "003": (_box_mask(SHAPE, [np.s_[12:20, 12:22, 2:5]]), np.zeros(SHAPE, bool)),  # missed
    "004": (np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)),  # nothing anywhere
    "005": (_BLOB, np.roll(_BLOB, (2, -1), axis=(0, 1))),
    "006": (
        _box_mask(SHAPE, [np.s_[8:14, 8:14, 0:3]]),
        _box_mask(SHAPE, [np.s_[8:15, 8:13, 0:4]]),
    ),
}
# ABC/2 of the boxes by Kothari's rule, by hand: A the in-plane diagonal of the box, B its
# width across that diagonal (its other two corners lie area / A either side of it), C the
# slice thickness times the weighted slices.
_SX, _SY, _SZ = SPACING


def _box_abc2(nx: int, ny: int, slices: float) -> float:
    a = math.hypot(nx * _SX, ny * _SY)
    b = 2 * nx * _SX * ny * _SY / a
    return a * b * slices * _SZ / 2 / 1000


ABC2_BY_HAND = {  # case: (true mask, predicted mask)
    "001": (_box_abc2(6, 12, 3 + 0.5), _box_abc2(7, 10, 4)),
    "002": (0.0, _box_abc2(4, 7, 2)),
    "003": (_box_abc2(8, 10, 3), 0.0),
    "004": (0.0, 0.0),
    "006": (_box_abc2(6, 6, 3), _box_abc2(7, 5, 4)),
}


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    """An INSTANCE 2022-layout folder of the `CASES`, and the pass-through checkpoint."""
    root = tmp_path_factory.mktemp("boxes")
    affine = np.diag([*SPACING, 1.0])
    for folder in ("train/data", "train/label"):
        (root / "set" / folder).mkdir(parents=True)
    for case, (truth, bright) in CASES.items():
        hu = with_air(np.where(bright, BLEED_HU, BRAIN_HU))
        save_scan(root / "set" / "train" / "data" / f"{case}.nii.gz", hu, affine)
        label = nib.Nifti1Image(truth.astype(np.uint8), affine)
        nib.save(label, root / "set" / "train" / "label" / f"{case}.nii.gz")
    return save_checkpoint(passthrough_module(), root / "pass.ckpt", PRE), root / "set"


def _rows(out) -> list[dict]:
    with open(out / "patients.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _strict_json(path) -> dict:
    """summary.json as strict JSON: NaN and Infinity are not JSON."""

    def refuse(token: str):
        raise AssertionError(f"{path}: {token} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.reliability(
    case="INSTANCE 2022 volumes scored with its official definitions",
    did="ichseg evaluate --metrics instance22 on an INSTANCE 2022-layout set of anisotropic "
    "volumes (an empty truth, an empty prediction, both empty); every score recomputed with "
    "DeepMind's surface-distance and numpy, ABC/2 of the boxes by hand, the agreement from "
    "patients.csv",
    entry="ichseg evaluate --metrics instance22",
)
def test_instance22_metrics_are_the_official_ones_with_agreement_and_abc2(
    boxes, deepmind, tmp_path, capsys, record_behaviour
):
    ckpt, root = boxes
    out = tmp_path / "eval"
    argv = ["evaluate", ckpt, "--source", "instance22", "--root", root, "-o", out]
    code, stdout, err = _run([*argv, "--metrics", "instance22"], capsys)
    assert code == 0, err
    rows = _rows(out)
    assert [r["case"] for r in rows] == list(CASES)
    for row in rows:
        label = nib.load(root / "train" / "label" / f"{row['case']}.nii.gz")
        truth = np.asarray(label.dataobj) > 0
        scan = nib.load(root / "train" / "data" / f"{row['case']}.nii.gz")
        hu = np.asarray(scan.dataobj, dtype=float)  # through the header's slope and intercept
        pred = np.rint(window(hu, 40.0, 120.0) * 255) >= 128
        assert np.array_equal(pred, CASES[row["case"]][1])  # what the network predicts
        spacing = tuple(float(z) for z in label.header.get_zooms())
        for key, expected in official_scores(pred, truth, spacing, deepmind).items():
            assert _close(row[key], expected), (row["case"], key, row[key], expected)
        assert (row["protocol"], row["nsd_tolerance_mm"]) == ("instance22", "0.42")
        if row["case"] in ABC2_BY_HAND:
            true_abc2, pred_abc2 = ABC2_BY_HAND[row["case"]]
            assert _close(row["abc2_true_ml"], true_abc2), row["case"]
            assert _close(row["abc2_predicted_ml"], pred_abc2), row["case"]
    summary = _strict_json(out / "summary.json")
    protocol = summary["volume_protocol"]
    assert (protocol["name"], protocol["nsd_tolerance_mm"]) == ("instance22", 0.42)
    assert summary["precision"] == "fp32"
    hd = np.array([float(r["hd_mm"]) for r in rows])
    assert summary["hd_mm_infinite"] == int(np.isinf(hd).sum()) == 3
    assert math.isclose(summary["hd_mm_mean"], hd[np.isfinite(hd)].mean(), rel_tol=1e-5)
    # Agreement over the volumes with a bleed, recomputed from patients.csv's columns.
    bleeding = [r for r in rows if int(r["true_voxels"]) > 0]
    truth_ml = [float(r["true_ml"]) for r in bleeding]
    found = summary["volume_agreement"]
    assert found["over"] == "volumes with a true bleed" and found["ichseg"]["n"] == 4
    for name, column in (
        ("ichseg", "predicted_ml"),
        ("abc2_predicted", "abc2_predicted_ml"),
        ("abc2_true", "abc2_true_ml"),
    ):
        expected = agreement(truth_ml, [float(r[column]) for r in bleeding])
        assert set(found[name]) == set(expected)
        for key, value in expected.items():
            assert (found[name][key] is None and math.isnan(value)) or math.isclose(
                found[name][key], value, rel_tol=1e-4, abs_tol=1e-6
            ), (name, key)
    title = Image.open(out / "bland_altman.png").text["Title"]
    assert "Bland-Altman" in title and "INSTANCE 2022" in title and "4 volumes" in title
    assert "(instance22 metrics, fp32;" in stdout and "HD (mm)" in stdout
    assert "(3; 3 inf)" in stdout  # HD: finite on 3 volumes, infinite on 3
    assert "volume agreement with the true mL over 4 volumes" in stdout
    record_behaviour(f"exit 0; {' / '.join(stdout.strip().splitlines())}")


@pytest.mark.reliability(
    case="scores on a CPU that computes bf16",
    did="ichseg evaluate and predict with the CPU's bf16 check answering yes",
    entry="ichseg evaluate, ichseg predict",
)
def test_evaluate_scores_in_fp32_unless_asked_where_predict_picks_bf16(
    boxes, tmp_path, capsys, monkeypatch, record_behaviour
):
    ckpt, root = boxes
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    argv = ["evaluate", ckpt, "--source", "instance22", "--root", root]
    precisions = {}
    for name, extra in (("default", []), ("auto", ["--precision", "auto"])):
        code, _, err = _run([*argv, "-o", tmp_path / name, *extra], capsys)
        assert code == 0, err
        summary = _strict_json(tmp_path / name / "summary.json")
        precisions[name] = summary["precision"]
    assert precisions == {"default": "fp32", "auto": "bf16"}
    # The default metrics are ichseg's, at ichseg's tolerance, named on every row.
    assert summary["volume_protocol"]["name"] == "ichseg"
    assert summary["nsd_tolerance_mm"] == summary["volume_protocol"]["nsd_tolerance_mm"] == 2.5
    assert {(r["protocol"], r["nsd_tolerance_mm"]) for r in _rows(tmp_path / "auto")} == {
        ("ichseg", "2.5")
    }
    scan = root / "train" / "data" / "001.nii.gz"
    code, _, err = _run(["predict", ckpt, scan, "-o", tmp_path / "pred"], capsys)
    assert code == 0, err
    predicted = json.loads((tmp_path / "pred" / "001.json").read_text())
    assert predicted["precision"] == "bf16"
    record_behaviour(
        f"evaluate: summary precision {precisions['default']} by default, "
        f"{precisions['auto']} with --precision auto; predict: {predicted['precision']}"
    )
