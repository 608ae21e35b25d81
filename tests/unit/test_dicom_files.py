"""DICOM inputs file by file: every file accounted for, axial series read by their geometry
whatever wrote them, single files and `.` as SCAN, zips read in one pass."""

from __future__ import annotations

import json
import math
import zipfile
from collections import Counter
from pathlib import Path

import highdicom
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from ichseg.errors import IchsegError
from ichseg.scans import open_scan
from tests.helpers.dicom_series import ZOOMS, synthetic_uid, write_series, zip_folder
from tests.helpers.scans import with_air
from tests.unit.test_dicom_input import FP32, _refused, bleeds_volume, run_cli

VOXEL_ML = math.prod(ZOOMS) / 1000
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def _by_position(paths: list[Path]) -> list[Path]:
    """The files of an axial series in slice order, by their ImagePositionPatient z."""
    return sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))


def _cut(path: Path, size: int) -> None:
    """Keep the first `size` bytes of the file, as a copy interrupted there leaves it."""
    path.write_bytes(path.read_bytes()[:size])


def _rewrite(paths: list[Path], **tags) -> None:
    """Set (or, given None, delete) these attributes in every file, as another writer would."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in tags.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path)


def _predict(ckpt: Path, scans: list, out: Path, capsys, *options: str) -> dict[str, dict]:
    """Run `ichseg predict`, expect exit 0 and return each JSON summary by its file stem."""
    code, _, err = run_cli(["predict", ckpt, *scans, "-o", out, *options, *FP32], capsys)
    assert code == 0, err
    return {p.name[: -len(".json")]: json.loads(p.read_text()) for p in out.glob("*.json")}


def _mask(out: Path, stem: str) -> np.ndarray:
    return np.asarray(nib.load(out / f"{stem}_mask.nii.gz").dataobj).astype(bool)


# Where a copy of the first and last slice files stops: a function of (file size, offset of
# the pixel data element).
CUTS = {
    "empty": lambda size, pixels: 0,
    "in the preamble": lambda size, pixels: 100,
    "inside DICM": lambda size, pixels: 130,
    "in the file meta": lambda size, pixels: 200,
    "in the data set": lambda size, pixels: pixels // 2 + 200,
    "before the pixel data": lambda size, pixels: pixels,
    "in the pixel data element's header": lambda size, pixels: pixels + 6,
    "100 bytes into the pixel data": lambda size, pixels: pixels + 12 + 100,
    "one byte short": lambda size, pixels: size - 1,
}


@pytest.mark.reliability(
    case="DICOM series with files cut short",
    did="a 6-slice series whose first and last slice files are cut short",
    entry="ichseg predict",
)
@pytest.mark.parametrize("where", list(CUTS))
def test_files_cut_short_are_refused_naming_them(where, ckpts, tmp_path, capsys, record_behaviour):
    """Every cut, from an empty file to one byte short, is named: never 4 slices read as 6."""
    folder = tmp_path / "head"
    first, *_, last = _by_position(write_series(folder, bleeds_volume()[0]))
    for path in (first, last):
        blob = path.read_bytes()
        _cut(path, CUTS[where](len(blob), blob.find(PIXEL_DATA_TAG)))
    out = tmp_path / "out"
    needles = ("2 of 6 file(s) look like DICOM but cannot be read", "--allow-unreadable")
    argv = ["predict", ckpts["pass"], folder, "-o", out, *FP32]
    line = _refused(argv, capsys, out, *needles, str(first), str(last))
    zipped = zip_folder(folder, tmp_path / "head.zip")
    argv[2] = zipped
    _refused(argv, capsys, out, *needles, f"{zipped}:DICOM/{first.name}")
    did = f"the first and last slice files of a 6-slice series cut short: {where}"
    record_behaviour(f"exit 2, nothing written: {line}", did=did)


@pytest.mark.reliability(
    case="DICOM series with unreadable files, --allow-unreadable",
    did="the first and last of 6 slice files cut short, --allow-unreadable",
    entry="ichseg predict --allow-unreadable",
)
def test_allow_unreadable_reads_the_rest_and_the_json_lists_them(
    ckpts, tmp_path, capsys, record_behaviour
):
    hu, bleeds = bleeds_volume()
    folder = tmp_path / "head"
    first, *_, last = _by_position(write_series(folder, hu))
    _cut(first, 0)
    _cut(last, 1000)
    out = tmp_path / "out"
    summary = _predict(ckpts["pass"], [folder], out, capsys, "--allow-unreadable")["head"]
    # The middle four slices: the pass-through network predicts exactly their bleed voxels.
    kept = bleeds[:, :, 1:5]
    np.testing.assert_array_equal(_mask(out, "head"), kept)
    assert summary["n_slices"] == 4
    assert summary["bleed_volume_ml"] == pytest.approx(kept.sum() * VOXEL_ML, abs=1e-3)
    dicom = summary["dicom"]
    why = {u["file"]: u["why"] for u in dicom["unreadable_files_left_out"]}
    assert sorted(why) == sorted([str(first), str(last)])
    assert why[str(first)].startswith("0 bytes") and "cut short" in why[str(last)]
    assert (dicom["n_files"], dicom["files_in_input"]) == (4, 6)
    record_behaviour(
        f"exit 0 on the 4 readable slices, {summary['bleed_volume_ml']} mL (the middle slices' "
        f"bleed exactly); the JSON lists {dicom['unreadable_files_left_out']}"
    )


def _damage_header(path: Path) -> None:
    """48 bytes zeroed from its Rows element on, as a bad sector leaves them."""
    blob = bytearray(path.read_bytes())
    rows = blob.find(b"\x28\x00\x10\x00")
    blob[rows : rows + 48] = bytes(48)
    path.write_bytes(bytes(blob))


def _cut_pixel_data(path: Path) -> None:
    """its header whole and the last 100 bytes of its pixel data gone."""
    _cut(path, path.stat().st_size - 100)


@pytest.mark.reliability(
    case="DICOM series with a damaged file in the middle",
    did="a good scan, then a 6-slice series whose 3rd slice file is damaged",
    entry="ichseg predict",
)
@pytest.mark.parametrize("damage", [_damage_header, _cut_pixel_data], ids=["header", "pixels"])
def test_damaged_middle_file_is_named_before_any_scan_is_predicted(
    damage, ckpts, tmp_path, capsys, record_behaviour
):
    hu, _ = bleeds_volume()
    write_series(tmp_path / "good", hu)
    middle = _by_position(write_series(tmp_path / "head", hu))[2]
    damage(middle)
    # Found from the headers: opening the series, before any pixel data is decoded.
    with pytest.raises(IchsegError, match="1 of 6 file"):
        open_scan(tmp_path / "head")
    out = tmp_path / "out"
    argv = ["predict", ckpts["pass"], tmp_path / "good", tmp_path / "head", "-o", out, *FP32]
    line = _refused(argv, capsys, out, "1 of 6 file(s) look like DICOM", str(middle))
    assert "uneven slice spacing" not in line
    record_behaviour(
        f"exit 2, nothing written (not even the good scan's outputs): {line}",
        did=f"a good scan, then a 6-slice series whose 3rd slice file has "
        f"{damage.__doc__.strip().rstrip('.')}",
    )


def _text_report(path: Path, series_uid: str) -> None:
    """A DICOM Basic Text SR: DICOM, but no image."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.SeriesInstanceUID = "SR", series_uid
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.reliability(
    case="every file of a DICOM input accounted for",
    did="a 4-slice series with a localizer, another series, a dose screen capture, a report "
    "and a text file, --series",
    entry="ichseg predict",
)
def test_every_file_of_the_input_is_accounted_for(ckpts, tmp_path, capsys, record_behaviour):
    folder = tmp_path / "study"
    head = synthetic_uid("accounted head")
    write_series(folder / "a", with_air(np.full((32, 32, 4), 30.0)), series_uid=head)
    scout = np.zeros((32, 32, 1))
    localizer = ("ORIGINAL", "PRIMARY", "LOCALIZER")
    write_series(
        folder / "a", scout, col_dir=(0, 0, -1), image_type=localizer, series_uid=head, prefix="S"
    )
    write_series(folder / "b", with_air(np.full((32, 32, 3), 30.0)), description="Bone")
    dose = write_series(folder / "c", scout, description="Dose report", prefix="D")
    _rewrite(dose, ImageOrientationPatient=None)
    _text_report(folder / "report.dcm", synthetic_uid("report"))
    (folder / "notes.txt").write_text("scanned on the night shift\n")
    summary = _predict(ckpts["pass"], [folder], tmp_path / "o", capsys, "--series", head)
    dicom = summary["study"]["dicom"]
    expected = {
        "not_dicom": 1,
        "non_image_objects": 1,
        "localizer": 1,
        "non_axial": 0,
        "without_orientation": 1,
        "other_series": 3,
    }
    assert dicom["left_out"] == expected
    assert dicom["n_files"] == 4 and dicom["unreadable_files_left_out"] == []
    files = sum(p.is_file() for p in folder.rglob("*"))
    assert dicom["files_in_input"] == files == 4 + sum(expected.values())
    record_behaviour(f"exit 0; the JSON accounts for all {files} files: {dicom['left_out']}")


IMAGE_TYPES = {
    "MPR": ("DERIVED", "SECONDARY", "MPR"),
    "REFORMATTED": ("DERIVED", "SECONDARY", "REFORMATTED"),
    "HELICAL": ("ORIGINAL", "PRIMARY", "HELICAL"),
    "GDCM": ("DERIVED", "SECONDARY"),
    "AXIAL, tilted 25 degrees": ("ORIGINAL", "PRIMARY", "AXIAL"),
}


@pytest.mark.reliability(
    case="axial DICOM series of any ImageType",
    did="an axial series typed as other writers type it",
    entry="ichseg predict --series",
)
@pytest.mark.parametrize("kind", list(IMAGE_TYPES))
def test_axial_series_is_read_whatever_its_image_type(
    kind, ckpts, tmp_path, capsys, record_behaviour
):
    hu, bleeds = bleeds_volume()
    # A head tilted along the orbitomeatal line: the slice normal 25 degrees from the z axis.
    angle = math.radians(25.0 if "tilted" in kind else 0.0)
    col_dir = (0.0, math.cos(angle), math.sin(angle))
    uid = synthetic_uid("typed", kind)
    write_series(
        tmp_path / "head", hu, col_dir=col_dir, image_type=IMAGE_TYPES[kind], series_uid=uid
    )
    out = tmp_path / "out"
    summary = _predict(ckpts["pass"], [tmp_path / "head"], out, capsys, "--series", uid)["head"]
    np.testing.assert_array_equal(_mask(out, "head"), bleeds)
    assert summary["bleed_volume_ml"] == pytest.approx(bleeds.sum() * VOXEL_ML, abs=1e-3)
    assert summary["dicom"]["n_files"] == 6
    typed = "\\".join(IMAGE_TYPES[kind])
    tilted = " whose slice normal is 25 degrees from the z axis" if "tilted" in kind else ""
    record_behaviour(
        f"exit 0, all 6 slices, {summary['bleed_volume_ml']} mL (the bleed exactly)",
        did=f"a 6-slice axial series typed {typed}{tilted}",
    )


@pytest.mark.reliability(
    case="non-axial DICOM series typed AXIAL",
    did="a sagittal 3-image series typed ORIGINAL\\PRIMARY\\AXIAL beside an axial one, then alone",
    entry="ichseg predict",
)
def test_non_axial_images_are_left_out_by_their_geometry(ckpts, tmp_path, capsys, record_behaviour):
    folder = tmp_path / "study"
    write_series(folder / "axial", with_air(np.full((32, 32, 4), 30.0)))
    sagittal = dict(row_dir=(0, 1, 0), col_dir=(0, 0, -1), description="Sag", prefix="SAG")
    write_series(folder / "sagittal", np.zeros((32, 32, 3)), **sagittal)
    summary = _predict(ckpts["pass"], [folder], tmp_path / "o", capsys)["study"]
    assert summary["dicom"]["left_out"]["non_axial"] == 3
    assert summary["dicom"]["n_files"] == 4
    out = tmp_path / "q"
    argv = ["predict", ckpts["pass"], folder / "sagittal", "-o", out, *FP32]
    line = _refused(argv, capsys, out, "no axial DICOM image among 3 file(s)", "3 non-axial")
    record_behaviour(f"exit 0 on the axial series beside it; alone, exit 2: {line}")


@pytest.mark.reliability(
    case="CT series written by GDCM/ITK (RescaleType US)",
    did="a 6-slice CT series typed DERIVED\\SECONDARY with RescaleType US, as SimpleITK's "
    "series writer leaves it",
    entry="ichseg predict",
)
def test_rescale_type_us_is_taken_as_hu_for_ct(ckpts, tmp_path, capsys, record_behaviour):
    hu, bleeds = bleeds_volume()
    paths = write_series(tmp_path / "itk", hu, image_type=("DERIVED", "SECONDARY"))
    _rewrite(paths, RescaleType="US")
    out = tmp_path / "out"
    summary = _predict(ckpts["pass"], [tmp_path / "itk"], out, capsys)["itk"]
    np.testing.assert_array_equal(_mask(out, "itk"), bleeds)
    dicom = summary["dicom"]
    assert (dicom["rescale_type_as_written"], dicom["rescale_taken_as_hu"]) == ("US", True)
    # Absent: HU by the standard, nothing taken; another unit: refused, naming it.
    _rewrite(paths, RescaleType=None)
    summary = _predict(ckpts["pass"], [tmp_path / "itk"], tmp_path / "absent", capsys)["itk"]
    assert summary["dicom"]["rescale_type_as_written"] is None
    assert summary["dicom"]["rescale_taken_as_hu"] is False
    _rewrite(paths, RescaleType="OD")
    argv = ["predict", ckpts["pass"], tmp_path / "itk", "-o", tmp_path / "od", *FP32]
    line = _refused(argv, capsys, tmp_path / "od", "expected RescaleType HU", "found OD")
    record_behaviour(
        f"exit 0, the bleed exactly, the JSON says rescale_type_as_written US, "
        f"rescale_taken_as_hu true; RescaleType OD: {line}"
    )


def _legacy_converted(folder: Path) -> None:
    """Three classic slices converted by highdicom into one Legacy Converted Enhanced CT."""
    classic = write_series(folder.parent / "classic", with_air(np.full((32, 32, 3), 30.0)))
    image = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(p) for p in classic],
        series_instance_uid=synthetic_uid("enhanced"),
        series_number=3,
        sop_instance_uid=synthetic_uid("enhanced", 1),
        instance_number=1,
    )
    folder.mkdir()
    image.save_as(folder / "enhanced.dcm")


def _enhanced_one_frame(folder: Path) -> None:
    """One file of SOP class Enhanced CT Image Storage holding a single frame."""
    paths = write_series(folder, with_air(np.full((32, 32, 1), 30.0)))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
        ds.NumberOfFrames = 1
        ds.save_as(path)


@pytest.mark.reliability(
    case="enhanced multi-frame CT",
    did="one enhanced CT file",
    entry="ichseg predict",
)
@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (_legacy_converted, ("Legacy Converted Enhanced CT Image Storage", "3 frame(s)")),
        (_enhanced_one_frame, ("Enhanced CT Image Storage", "1 frame(s)")),
    ],
    ids=["legacy-converted", "enhanced-1-frame"],
)
def test_enhanced_ct_gets_the_multi_frame_message(
    make, needles, ckpts, tmp_path, capsys, record_behaviour
):
    make(tmp_path / "enhanced")
    out = tmp_path / "out"
    argv = ["predict", ckpts["pass"], tmp_path / "enhanced", "-o", out, *FP32]
    line = _refused(argv, capsys, out, "a multi-frame image", "classic single-frame", *needles)
    assert "single slice" not in line
    record_behaviour(f"exit 2: {line}", did=make.__doc__.strip().rstrip("."))


def _without_preamble(path: Path) -> None:
    """The file meta and data set as they were, without the preamble and `DICM`."""
    path.write_bytes(path.read_bytes()[132:])


def _bare_data_set(path: Path) -> None:
    """The data set alone, implicit VR, no preamble, no file meta (old ACR-NEMA style)."""
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)


@pytest.mark.reliability(
    case="DICOM files without preamble",
    did="a 6-slice series whose files have no 128-byte preamble and DICM prefix",
    entry="ichseg predict",
)
@pytest.mark.parametrize("strip", [_without_preamble, _bare_data_set], ids=["meta", "bare"])
def test_files_without_preamble_are_read(strip, ckpts, tmp_path, capsys, record_behaviour):
    hu, bleeds = bleeds_volume()
    paths = write_series(tmp_path / "head", hu)
    for path in paths:
        strip(path)
        assert path.read_bytes()[128:132] != b"DICM"
    (tmp_path / "head" / "notes.txt").write_text("not DICOM\n")
    np.testing.assert_array_equal(open_scan(tmp_path / "head").read_hu(), hu)
    out = tmp_path / "out"
    summary = _predict(ckpts["pass"], [tmp_path / "head"], out, capsys)["head"]
    np.testing.assert_array_equal(_mask(out, "head"), bleeds)
    assert summary["dicom"]["left_out"]["not_dicom"] == 1
    record_behaviour(
        f"exit 0, all 6 slices, {summary['bleed_volume_ml']} mL (the bleed exactly)",
        did=f"a 6-slice series, each file: {strip.__doc__.strip().rstrip('.')}",
    )


@pytest.mark.reliability(
    case="a single DICOM file or DICOMDIR as SCAN",
    did="one slice file of a series, the same named .dcm or without preamble, and a DICOMDIR "
    "given as SCAN",
    entry="ichseg predict",
)
def test_single_file_or_dicomdir_points_to_its_folder(ckpts, tmp_path, capsys, record_behaviour):
    paths = write_series(tmp_path / "series", with_air(np.full((32, 32, 3), 30.0)))
    fileset = FileSet()
    for path in paths:
        fileset.add(path)
    fileset.write(tmp_path / "media")
    named = tmp_path / "slice.dcm"
    named.write_bytes(paths[0].read_bytes())
    (tmp_path / "bare").mkdir()
    without_preamble = tmp_path / "bare" / "IM1"
    without_preamble.write_bytes(paths[0].read_bytes()[132:])
    out = tmp_path / "out"
    lines = []
    for scan in (paths[0], named, without_preamble, tmp_path / "media" / "DICOMDIR"):
        argv = ["predict", ckpts["pass"], scan, "-o", out, *FP32]
        folder = f"give the folder that holds it: {scan.parent.resolve()}"
        lines.append(_refused(argv, capsys, out, f"scan {scan}", folder))
    assert "a DICOMDIR" in lines[-1]
    # The folder the DICOMDIR names is read, the DICOMDIR counted as no image.
    summary = _predict(ckpts["pass"], [tmp_path / "media"], out, capsys)["media"]
    assert summary["dicom"]["n_files"] == 3
    assert summary["dicom"]["left_out"]["non_image_objects"] == 1
    record_behaviour(f"exit 2: {lines[0]}; {lines[-1]}; the folder itself is read")


@pytest.mark.reliability(
    case="DICOM folder given as . or .. or with a trailing slash",
    did="ichseg predict CKPT . (and .. from a subfolder, and head/) for a folder named head",
    entry="ichseg predict",
)
def test_dot_names_outputs_after_the_folder(ckpts, tmp_path, capsys, monkeypatch, record_behaviour):
    folder = tmp_path / "head"
    write_series(folder, with_air(np.full((32, 32, 3), 30.0)))
    (folder / "sub").mkdir()
    runs = ((folder, "."), (folder / "sub", ".."), (tmp_path, "head/"))
    for k, (where, scan) in enumerate(runs):
        monkeypatch.chdir(where)
        out = tmp_path / f"out{k}"
        _predict(ckpts["pass"], [scan], out, capsys)
        names = sorted(p.name for p in out.iterdir())
        assert {"head.json", "head_mask.nii.gz"} <= set(names), names
        assert all(name.startswith("head") for name in names), names
    record_behaviour(f"exit 0; {', '.join(s for _, s in runs)} each write {', '.join(names)}")


def test_a_zip_is_opened_once_per_pass_and_other_members_read_132_bytes(tmp_path, monkeypatch):
    """However many members a zip has, reading its series opens it once for the headers and once
    for the pixels, and reads a member that is not DICOM no further than 132 bytes: linear in the
    members, as a folder is (reopening it per member was quadratic: 169 s for 5,033 members)."""
    hu = with_air(np.full((32, 32, 4), 30.0))
    opened: list[str] = []
    read: Counter = Counter()

    class CountingZipFile(zipfile.ZipFile):
        def __init__(self, file, *args, **kwargs):
            opened.append(str(file))
            super().__init__(file, *args, **kwargs)

    def counting_read(stream, n=-1, _read=zipfile.ZipExtFile.read):
        data = _read(stream, n)
        read[stream.name] += len(data)
        return data

    for others in (3, 60):
        folder = tmp_path / f"with{others}"
        write_series(folder / "DICOM", hu)
        for k in range(others):
            (folder / "VIEWER").mkdir(exist_ok=True)
            (folder / "VIEWER" / f"viewer{k}.bin").write_bytes(bytes(range(256)) * 8)
        archive = zip_folder(folder, tmp_path / f"with{others}.zip")
        opened.clear()
        read.clear()
        with monkeypatch.context() as patch:
            patch.setattr(zipfile, "ZipFile", CountingZipFile)
            patch.setattr(zipfile.ZipExtFile, "read", counting_read)
            scan = open_scan(archive)
            assert opened == [str(archive)]
            np.testing.assert_array_equal(scan.read_hu(), hu)
        assert opened == [str(archive)] * 2
        viewer = {name: n for name, n in read.items() if "VIEWER" in name}
        assert len(viewer) == others and max(viewer.values()) <= 132
