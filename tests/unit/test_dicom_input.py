"""DICOM series in `ichseg predict`: geometry, HU, series choice, refusals, same mask as NIfTI."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import highdicom
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLosslessSV1, RLELossless, generate_uid

import ichseg
from ichseg.cli import main
from ichseg.scans import open_scan
from ichseg.scans.dicom import lps_to_ras
from tests.helpers.dicom_series import read_positions, synthetic_uid, write_series, zip_folder
from tests.helpers.scans import save_scan, with_air

FP32 = ("--precision", "fp32")


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def bleeds_volume() -> tuple[np.ndarray, np.ndarray]:
    """64×64×6 HU (brain 30 HU, bleeds 200 HU, air along one edge) with two asymmetric bleeds,
    and their mask."""
    mask = np.zeros((64, 64, 6), dtype=bool)
    mask[10:20, 30:34, 1:3] = True
    mask[40:45, 5:15, 5] = True
    return with_air(np.where(mask, 200.0, 30.0)), mask


def rotation(z_deg: float, x_deg: float) -> np.ndarray:
    """A rotation about z then x (an oblique, but not strongly oblique, head position)."""
    a, b = math.radians(z_deg), math.radians(x_deg)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rx @ rz


def test_affine_maps_voxels_to_their_image_positions(tmp_path):
    """The RAS affine against ImagePositionPatient: voxel (i, j, k) of the file at slice k lies at
    IPP_k + i * row * column spacing + j * column * row spacing, in LPS; RAS negates x and y."""
    turn = rotation(20, 10)
    row_dir, col_dir = turn[:, 0], turn[:, 1]
    hu = np.random.default_rng(1).integers(-400, 400, (20, 18, 5)).astype(float) * 2
    hu[0] = -1000.0  # air at one edge: a CT in HU
    paths = write_series(tmp_path / "s", hu, row_dir=row_dir, col_dir=col_dir, seed=3)
    scan = open_scan(tmp_path / "s")
    positions = read_positions(paths)
    spacing = {p: pydicom.dcmread(p).PixelSpacing for p in map(str, paths)}
    volume = scan.read_hu()
    for k, label in enumerate(scan.labels):
        for i, j in ((0, 0), (11, 0), (0, 9), (7, 4)):
            lps = (
                positions[label] + i * row_dir * spacing[label][1] + j * col_dir * spacing[label][0]
            )
            ras = np.array([-lps[0], -lps[1], lps[2]])
            np.testing.assert_allclose(scan.image.affine @ [i, j, k, 1], [*ras, 1], atol=1e-3)
        # The slice's voxels are that file's pixels, transposed, through its rescale.
        ds = pydicom.dcmread(label)
        np.testing.assert_array_equal(
            volume[:, :, k], (ds.pixel_array * float(ds.RescaleSlope) + ds.RescaleIntercept).T
        )
    # Written in order of position along the normal, so slice k is the writer's k.
    np.testing.assert_array_equal(volume, hu)
    assert scan.zooms == pytest.approx((0.5, 0.4, 5.0), rel=1e-5)  # positions: 4 decimals
    assert (scan.shape, scan.slice_step_mm) == ((20, 18, 5), pytest.approx(5.0, rel=1e-5))


def test_lps_to_ras_negates_the_first_two_rows():
    lps = np.arange(16.0).reshape(4, 4)
    ras = lps_to_ras(lps)
    np.testing.assert_array_equal(ras[:2], -lps[:2])
    np.testing.assert_array_equal(ras[2:], lps[2:])
    # A plain axial series (rows along +x_LPS, columns along +y_LPS) is L, P, S in nibabel's terms.
    assert nib.aff2axcodes(lps_to_ras(np.diag([0.5, 0.4, 5.0, 1.0]))) == ("L", "P", "S")


def test_pydicom_ct_sample_headers_read_as_a_series(tmp_path):
    """pydicom's bundled CT slice (a scanner's real header) copied into a 3-slice series."""
    sample_path = pydicom.examples.get_path("ct")
    sample = pydicom.dcmread(sample_path)
    folder = tmp_path / "sample"
    folder.mkdir()
    series_uid = generate_uid()
    normal = np.cross(
        np.array(sample.ImageOrientationPatient[:3], float),
        np.array(sample.ImageOrientationPatient[3:], float),
    )
    for k in (2, 0, 1):
        ds = pydicom.dcmread(sample_path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        position = np.array(sample.ImagePositionPatient, float) + 5.0 * k * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.save_as(folder / f"slice{k}.dcm")
    scan = open_scan(folder)
    expected = sample.pixel_array * float(sample.RescaleSlope) + float(sample.RescaleIntercept)
    hu = scan.read_hu()
    assert hu.shape == (sample.Columns, sample.Rows, 3)
    for k in range(3):
        np.testing.assert_array_equal(hu[:, :, k], expected.T)
    assert scan.zooms == pytest.approx((*map(float, sample.PixelSpacing[::-1]), 5.0))


def test_rle_compressed_series_reads_the_same_hu(tmp_path):
    """A compressed transfer syntax pydicom decodes by itself (RLE Lossless) gives the same HU."""
    hu, _ = bleeds_volume()
    paths = write_series(tmp_path / "rle", hu)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(open_scan(tmp_path / "rle").read_hu(), hu)


@pytest.mark.reliability(
    case="DICOM series and its NIfTI",
    did="the same scan as a NIfTI and as a shuffled DICOM series (slope 2, intercept -1024, "
    "wrong SliceThickness), as a folder and as a zip",
    entry="ichseg predict",
)
def test_dicom_series_gives_the_nifti_mask_and_ml(ckpts, tmp_path, capsys, record_behaviour):
    hu, mask = bleeds_volume()
    # The NIfTI's axis 0 runs towards the patient's right and axis 1 anterior (RAS); DICOM's
    # column index runs towards the left and the row index posterior (LPS): the same head is
    # the array flipped in both.
    save_scan(tmp_path / "head.nii", hu)
    write_series(tmp_path / "head_dicom", hu[::-1, ::-1], origin=(-31.5, -25.2, 0.0), seed=5)
    zip_folder(tmp_path / "head_dicom", tmp_path / "head_zip.zip")
    out = tmp_path / "out"
    for ckpt in ("pass", "a"):
        code, stdout, err = run_cli(
            [
                *("predict", ckpts[ckpt], tmp_path / "head.nii", tmp_path / "head_dicom"),
                *(tmp_path / "head_zip.zip", "-o", out / ckpt, *FP32),
            ],
            capsys,
        )
        assert code == 0, err
        masks = {
            n: np.asarray(nib.load(out / ckpt / f"{n}_mask.nii.gz").dataobj)
            for n in ("head", "head_dicom", "head_zip")
        }
        summaries = {
            n: json.loads((out / ckpt / f"{n}.json").read_text())
            for n in ("head", "head_dicom", "head_zip")
        }
        if ckpt == "pass":
            np.testing.assert_array_equal(masks["head"], mask)
        assert masks["head"].any()
        for name in ("head_dicom", "head_zip"):
            np.testing.assert_array_equal(masks[name], masks["head"][::-1, ::-1])
            for key in ("bleed_volume_ml", "slices_with_hemorrhage", "bleeds"):
                assert summaries[name][key] == summaries["head"][key], (ckpt, name, key)
            # The NIfTI header holds float32 voxel sizes, DICOM decimal strings.
            assert summaries[name]["voxel_mm"] == pytest.approx(summaries["head"]["voxel_mm"])
            assert summaries[name]["dicom"]["n_files"] == 6
            # Written with the DICOM array's own RAS affine: the same head in world space.
            dicom_mask = nib.load(out / ckpt / f"{name}_mask.nii.gz")
            nifti_mask = nib.load(out / ckpt / "head_mask.nii.gz")
            np.testing.assert_allclose(
                dicom_mask.affine @ [63, 63, 0, 1], nifti_mask.affine @ [0, 0, 0, 1], atol=1e-4
            )
        # Each slice with hemorrhage named as the viewer shows it: read from the files by position.
        by_z = {
            round(float(ds.ImagePositionPatient[2])): ds
            for ds in map(pydicom.dcmread, (tmp_path / "head_dicom").iterdir())
        }
        expected = [
            {
                "slice": n,
                "instance_number": by_z[5 * (n - 1)].InstanceNumber,
                "sop_instance_uid": by_z[5 * (n - 1)].SOPInstanceUID,
            }
            for n in summaries["head"]["slices_with_hemorrhage"]
        ]
        assert summaries["head_dicom"]["dicom"]["instances_with_hemorrhage"] == expected
    line = next(row for row in stdout.splitlines() if "head_dicom" in row)
    record_behaviour(f"exit 0, same mask (flipped as the arrays are) and mL as the NIfTI: {line}")


def test_series_option_picks_one_of_several_and_localizers_are_left_out(ckpts, tmp_path, capsys):
    hu, mask = bleeds_volume()
    folder = tmp_path / "study"
    write_series(folder / "a", hu, description="Head 5mm", seed=1)
    bone = synthetic_uid("bone")
    write_series(
        folder / "b",
        with_air(np.full(hu.shape, 30.0)),
        description="Bone",
        series_uid=bone,
        prefix="B",
    )
    # A localizer in the same series, lying across the others: it must not take part.
    scout = np.zeros((64, 64, 1))
    write_series(
        folder / "a",
        scout,
        row_dir=(1, 0, 0),
        col_dir=(0, 0, -1),
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        series_uid=pydicom.dcmread(next((folder / "a").iterdir())).SeriesInstanceUID,
        prefix="SCOUT",
    )
    code, _, err = run_cli(
        ["predict", ckpts["pass"], folder, "--series", bone, "-o", tmp_path / "o", *FP32], capsys
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "study.json").read_text())
    assert summary["dicom"]["series_instance_uid"] == bone
    assert summary["bleed_voxels"] == 0
    head = pydicom.dcmread(next((folder / "a").glob("IM*"))).SeriesInstanceUID
    # A UID no input holds: the study's two series are listed, a lone series is named as read.
    argv = ["predict", ckpts["pass"], folder, "--series", "1.2.3", "-o", tmp_path / "q", *FP32]
    _refused(argv, capsys, tmp_path / "q", "2 CT series", f"{bone} CT 'Bone' (6 images)")
    argv = [*argv[:2], folder / "b", *argv[3:]]
    _refused(argv, capsys, tmp_path / "q", "--series 1.2.3: no DICOM input holds", bone)
    # Each input uses the series of --series it holds, or its only one.
    argv = ["predict", ckpts["pass"], folder, folder / "a", "--series", bone, "-o", tmp_path / "r"]
    code, _, err = run_cli([*argv, *FP32], capsys)
    assert code == 0, err
    read = [json.loads((tmp_path / "r" / f"{n}.json").read_text()) for n in ("study", "a")]
    assert [s["dicom"]["series_instance_uid"] for s in read] == [bone, head]
    code, _, err = run_cli(
        ["predict", ckpts["pass"], folder, "--series", head, "-o", tmp_path / "p", *FP32], capsys
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "p" / "study.json").read_text())
    assert summary["dicom"]["excluded_localizer_or_non_axial"] == 1
    assert summary["bleed_voxels"] == int(mask.sum())


def _refused(argv: list, capsys, outdir: Path, *needles: str) -> str:
    code, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("ichseg predict: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not outdir.exists() or not any(outdir.iterdir())
    return lines[0]


def _mixed_sizes(folder: Path) -> None:
    uid = synthetic_uid("mixed sizes")
    write_series(folder, np.zeros((32, 32, 3)), series_uid=uid)
    write_series(folder, np.zeros((32, 24, 1)), series_uid=uid, first_slice=3, prefix="X")


def _mixed_orientations(folder: Path) -> None:
    uid = synthetic_uid("mixed orientations")
    write_series(folder, np.zeros((32, 32, 3)), series_uid=uid)
    turn = rotation(5, 0)
    write_series(
        folder,
        np.zeros((32, 32, 1)),
        row_dir=turn[:, 0],
        col_dir=turn[:, 1],
        series_uid=uid,
        first_slice=3,
        prefix="X",
    )


def _two_ct_series(folder: Path) -> None:
    write_series(folder, np.zeros((32, 32, 4)), description="Head 5mm")
    write_series(folder, np.zeros((32, 32, 3)), description="Bone", prefix="B")


def _not_dicom(folder: Path) -> None:
    folder.mkdir()
    (folder / "README.txt").write_text("not DICOM\n")


REFUSALS = [
    pytest.param(
        lambda f: write_series(f, np.zeros((32, 32, 4)), modality="MR"),
        ("Modality CT", "found MR", "IM000"),
        id="mr",
        marks=pytest.mark.reliability(
            case="DICOM series of another modality",
            did="a 4-slice series with Modality MR",
            entry="ichseg predict",
        ),
    ),
    pytest.param(
        _mixed_sizes,
        ("mixed image sizes", "24×32 here, 32×32 in", "X0000"),
        id="sizes",
        marks=pytest.mark.reliability(
            case="DICOM series of mixed image sizes",
            did="three 32×32 slices and one 24×32 slice in one series",
            entry="ichseg predict",
        ),
    ),
    pytest.param(
        _mixed_orientations,
        ("mixed image orientations", "ImageOrientationPatient", "X0000"),
        id="orientations",
        marks=pytest.mark.reliability(
            case="DICOM series of mixed orientations",
            did="one slice of a series rotated 5 degrees",
            entry="ichseg predict",
        ),
    ),
    pytest.param(
        lambda f: write_series(f, np.zeros((32, 32, 6)), drop=(3,)),
        ("uneven slice spacing", "10.000 mm", "missing slice"),
        id="gap",
        marks=pytest.mark.reliability(
            case="DICOM series with a missing slice",
            did="6 slices 5 mm apart, the 4th left out",
            entry="ichseg predict",
        ),
    ),
    pytest.param(
        lambda f: write_series(f, np.zeros((32, 32, 4)), tilt_deg=12.0),
        ("gantry tilt", "12.00 degrees", "GantryDetectorTilt 12", "--resample-tilt"),
        id="tilt",
        marks=pytest.mark.reliability(
            case="DICOM series with gantry tilt",
            did="slices stepping 5 mm along the normal and 1.06 mm in-plane (12 degrees)",
            entry="ichseg predict",
        ),
    ),
    pytest.param(
        lambda f: write_series(f, np.zeros((32, 32, 3)), transfer_syntax=JPEGLosslessSV1),
        ("compressed pixel data", "JPEG Lossless", JPEGLosslessSV1, "IM000"),
        id="compressed",
        marks=pytest.mark.reliability(
            case="DICOM series compressed beyond the installed handlers",
            did="transfer syntax JPEG Lossless SV1 declared, no decoder plugin for it installed",
            entry="ichseg predict",
        ),
    ),
    pytest.param(
        lambda f: write_series(f, np.zeros((32, 32, 1))),
        ("single slice", "at least 2"),
        id="single",
        marks=pytest.mark.reliability(
            case="DICOM series of a single slice",
            did="a folder with one CT slice",
            entry="ichseg predict",
        ),
    ),
    pytest.param(
        lambda f: f.mkdir(),
        ("no DICOM image", "0 file(s)"),
        id="empty",
        marks=pytest.mark.reliability(
            case="empty DICOM folder", did="an empty folder", entry="ichseg predict"
        ),
    ),
    pytest.param(
        _not_dicom,
        ("no DICOM image", "1 file(s)", "1 not DICOM"),
        id="not-dicom",
        marks=pytest.mark.reliability(
            case="folder without DICOM images",
            did="a folder holding only a text file",
            entry="ichseg predict",
        ),
    ),
    pytest.param(
        _two_ct_series,
        ("2 CT series", "--series UID", "'Head 5mm' (4 images)", "'Bone' (3 images)"),
        id="two-series",
        marks=pytest.mark.reliability(
            case="folder of several CT series without --series",
            did="two CT series (4 and 3 slices) in one folder",
            entry="ichseg predict",
        ),
    ),
]


@pytest.mark.parametrize(("make", "needles"), REFUSALS)
def test_unsafe_series_are_refused_in_one_line(
    make, needles, ckpts, tmp_path, capsys, record_behaviour
):
    if "JPEG Lossless" in needles:
        decoder = pydicom.pixels.get_decoder(JPEGLosslessSV1)
        if decoder.is_available:
            pytest.skip("a JPEG Lossless decoder is installed here")
    folder = tmp_path / "series"
    make(folder)
    out = tmp_path / "out"
    line = _refused(["predict", ckpts["pass"], folder, "-o", out, *FP32], capsys, out, *needles)
    # The same refusal for the folder zipped.
    zipped = zip_folder(folder, tmp_path / "series.zip")
    _refused(["predict", ckpts["pass"], zipped, "-o", out, *FP32], capsys, out, needles[0])
    shutil.rmtree(folder)
    record_behaviour(f"exit 2, nothing written: {line}")


def _source_order(folder: Path) -> list[pydicom.Dataset]:
    """The source files sorted by ImagePositionPatient z (axial series): the mask's slices."""
    files = [pydicom.dcmread(p) for p in folder.iterdir()]
    return sorted(files, key=lambda ds: float(ds.ImagePositionPatient[2]))


@pytest.mark.reliability(
    case="DICOM SEG of a prediction",
    did="a shuffled series predicted, its SEG read back with highdicom and with pydicom",
    entry="ichseg predict",
)
def test_dicom_seg_reads_back_to_the_nifti_mask(ckpts, tmp_path, capsys, record_behaviour):
    hu, _ = bleeds_volume()
    folder = tmp_path / "head"
    write_series(folder, hu, seed=7)
    out = tmp_path / "out"
    code, _, err = run_cli(["predict", ckpts["a"], folder, "-o", out, *FP32], capsys)
    assert code == 0, err
    mask = np.asarray(nib.load(out / "head_mask.nii.gz").dataobj).astype(bool)
    assert mask.any() and not mask.all()
    sources = _source_order(folder)
    uids = [ds.SOPInstanceUID for ds in sources]
    seg = highdicom.seg.segread(out / "head_seg.dcm")
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), mask.transpose(2, 1, 0))
    # pydicom alone: each frame mapped to its source instance through the per-frame references.
    raw = pydicom.dcmread(out / "head_seg.dcm")
    frames = raw.pixel_array.reshape(-1, raw.Rows, raw.Columns)
    for frame, item in zip(frames, raw.PerFrameFunctionalGroupsSequence, strict=True):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_array_equal(frame.astype(bool), mask[:, :, uids.index(ref)].T)
    assert len(frames) == len(uids)
    series = raw.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == set(uids)
    assert (raw.StudyInstanceUID, raw.PatientID) == (sources[0].StudyInstanceUID, "SYN0001")
    segment = raw.SegmentSequence[0]
    concept = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (concept.CodeValue, concept.CodingSchemeDesignator) == ("1386000", "SCT")
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("ichseg", ichseg.__version__)
    digest = hashlib.sha256(Path(ckpts["a"]).read_bytes()).hexdigest()[:16]
    assert f"a.ckpt sha256:{digest}" in algorithm.AlgorithmParameters
    summary = json.loads((out / "head.json").read_text())
    assert summary["seg"] == str(out / "head_seg.dcm")
    assert summary["checkpoint_ids"] == [f"a.ckpt sha256:{digest}"]
    # A second run replaces its own outputs; a SEG of the user's own is never replaced.
    code, _, err = run_cli(["predict", ckpts["a"], folder, "-o", out, *FP32], capsys)
    assert code == 0, err
    other = tmp_path / "other"
    other.mkdir()
    (other / "head_seg.dcm").write_bytes(b"the user's own SEG")
    code, _, err = run_cli(["predict", ckpts["a"], folder, "-o", other, *FP32], capsys)
    assert code == 2 and "head_seg.dcm: exists and is not an earlier ichseg predict" in err
    assert (other / "head_seg.dcm").read_bytes() == b"the user's own SEG"
    assert sorted(p.name for p in other.iterdir()) == ["head_seg.dcm"]
    record_behaviour(
        f"exit 0; the SEG ({len(frames)} frames, SCT 1386000, ichseg {ichseg.__version__}, "
        "checkpoint sha256) reads back, in highdicom and pydicom, to the NIfTI mask; a "
        f"head_seg.dcm of the user's is refused: {err.strip()}"
    )


def test_an_empty_prediction_still_gets_a_seg_of_empty_frames(ckpts, tmp_path, capsys):
    write_series(tmp_path / "clear", with_air(np.full((32, 32, 3), 30.0)))
    code, _, err = run_cli(
        ["predict", ckpts["pass"], tmp_path / "clear", "-o", tmp_path / "o", *FP32], capsys
    )
    assert code == 0, err
    raw = pydicom.dcmread(tmp_path / "o" / "clear_seg.dcm")
    assert raw.NumberOfFrames == 3 and not raw.pixel_array.any()


@pytest.mark.reliability(
    case="DICOM series with gantry tilt, --resample-tilt",
    did="slices shifted 2 rows (0.8 mm) per 5 mm slice step, a bleed fixed in the patient",
    entry="ichseg predict --resample-tilt",
)
def test_tilted_series_resampled_onto_the_orthogonal_grid(
    ckpts, tmp_path, capsys, record_behaviour
):
    """Slice k lies 2k rows further along the column direction, so a bleed fixed in the patient
    sits 2k rows higher in the file; resampled, it is on the same rows of every slice."""
    tilted = with_air(np.full((64, 64, 6), 30.0), columns=0)
    tilted[:2] = -1000.0  # air along rows the tilt does not shift
    expected = tilted.copy()
    for k in range(6):
        tilted[20:30, 30 - 2 * k : 40 - 2 * k, k] = 200.0
        expected[20:30, 30:40, k] = 200.0
        expected[:, : 2 * k, k] = -1024.0  # rows the tilted slice does not reach: air
    tilt = math.degrees(math.atan(0.8 / 5.0))
    write_series(tmp_path / "tilted", tilted, tilt_deg=tilt)
    scan = open_scan(tmp_path / "tilted", resample_tilt=True)
    np.testing.assert_allclose(scan.read_hu(), expected, atol=0.05)
    # The grid is orthogonal: its slice axis is the normal, 5 mm per slice.
    np.testing.assert_allclose(scan.image.affine[:3, 2], [0, 0, 5.0], atol=1e-6)
    assert scan.describe([])["dicom"]["gantry_tilt_deg"] == pytest.approx(tilt, abs=1e-3)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["predict", ckpts["pass"], tmp_path / "tilted", "--resample-tilt", "-o", out, *FP32],
        capsys,
    )
    assert code == 0, err
    mask = np.asarray(nib.load(out / "tilted_mask.nii.gz").dataobj).astype(bool)
    np.testing.assert_array_equal(mask, expected > 100)
    summary = json.loads((out / "tilted.json").read_text())
    assert summary["bleed_volume_ml"] == pytest.approx(6 * 100 * 0.5 * 0.4 * 5.0 / 1000)
    assert summary["dicom"]["resampled_for_tilt"] is True
    # The SEG's frames lie on the resampled planes and hold the NIfTI mask.
    raw = pydicom.dcmread(out / "tilted_seg.dcm")
    seen = []
    for frame, item in zip(raw.pixel_array, raw.PerFrameFunctionalGroupsSequence, strict=True):
        x, y, z = item.PlanePositionSequence[0].ImagePositionPatient
        k = round((float(z) - 30.0) / 5.0)  # the writer's origin z, 5 mm slices
        assert (float(x), float(y), float(z)) == pytest.approx((-10.0, -20.0, 30.0 + 5.0 * k))
        np.testing.assert_array_equal(frame.astype(bool), mask[:, :, k].T)
        seen.append(k)
    assert sorted(seen) == list(range(6))
    assert highdicom.seg.segread(out / "tilted_seg.dcm").number_of_segments == 1
    record_behaviour(f"exit 0, the bleed on the same rows of every slice: {stdout.splitlines()[0]}")
