"""Reading and validating a release folder (tiny releases written by the tests)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichseg.data.release import CSV_NAME, LABEL_CSV_COLUMNS, PhysioNetRelease, SliceLabel, slice_id
from ichseg.errors import IchsegError

# At least the 16x16 in-plane a scan needs (ichseg.scans.hounsfield).
SHAPE = (20, 18)
# The training orientation (ichseg.scans.orientation): axis 0 towards the left, 1 anterior.
AFFINE = np.diag([-0.4, 0.45, 5.0, 1.0])
# Patient -> per-slice hemorrhage flags (volume index order).
ICH = {7: (0, 1, 1, 0), 51: (0, 0, 0)}


def scan_of(patient: int, n: int) -> np.ndarray:
    """Distinct int16 HU values per patient."""
    return np.random.default_rng(patient).integers(-1000, 1500, (*SHAPE, n)).astype(np.int16)


def mask_of(flags: tuple[int, ...], value: int = 1) -> np.ndarray:
    """A mask whose slice k holds 3 * (k + 2) voxels when flagged, else nothing."""
    mask = np.zeros((*SHAPE, len(flags)), dtype=np.uint8)
    for k, flag in enumerate(flags):
        if flag:
            mask[2:5, 1 : 3 + k, k] = value
    return mask


def save(data: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    """Write a NIfTI-1 file (compressed when the name ends in .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def csv_rows(ich: dict[int, tuple[int, ...]]) -> list[list[object]]:
    """CSV rows: hemorrhage slices are epidural with a fracture."""
    rows = []
    for patient, flags in ich.items():
        for k, flag in enumerate(flags):
            rows.append([patient, k + 1, 0, 0, 0, flag, 0, 1 - flag, flag])
    return rows


def write_csv(
    path: Path, rows: list[list[object]], header: tuple[str, ...] = LABEL_CSV_COLUMNS
) -> None:
    """Write CSV rows below `header`."""
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def build(
    root: Path,
    ich: dict[int, tuple[int, ...]] = ICH,
    scans: str = "ct_scans",
    masks: str = "masks",
    csv_name: str = CSV_NAME,
    suffix: str = ".nii",
    mask_value: int = 1,
) -> Path:
    """Write a tiny valid release and return its root."""
    for patient, flags in ich.items():
        save(scan_of(patient, len(flags)), root / scans / f"{patient:03d}{suffix}")
        save(mask_of(flags, mask_value), root / masks / f"{patient:03d}{suffix}")
    write_csv(root / csv_name, csv_rows(ich))
    return root


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A valid release with patients 7 (bleeding on slices 2-3) and 51 (clean)."""
    return build(tmp_path / "release")


def test_reads_labels_volumes_and_slice_numbers(release: Path) -> None:
    data = PhysioNetRelease.open(release)
    assert data.patients == [7, 51]
    assert len(data.labels) == 7
    assert sum(label.has_ich for label in data.labels) == 2
    assert data.labels_sha256 == hashlib.sha256((release / CSV_NAME).read_bytes()).hexdigest()
    assert data.labels_for(7)[1] == SliceLabel(7, 2, (0, 0, 0, 1, 0), 0, 1)
    assert data.labels_for(7)[1].slice_id == slice_id(7, 2) == "007_02"
    volume = data.load_patient(7)
    np.testing.assert_array_equal(volume.hu, scan_of(7, 4).astype(np.float32))
    assert volume.hu.dtype == np.float32 and volume.mask.dtype == bool
    # Slice k of the volume holds 3 * (k + 2) mask voxels; it is CSV SliceNumber k + 1.
    for label in data.labels_for(7):
        k = label.slice_number - 1
        assert volume.mask[..., k].sum() == (3 * (k + 2) if label.has_ich else 0)
    assert volume.zooms == pytest.approx((0.4, 0.45, 5.0))
    np.testing.assert_allclose(volume.affine, AFFINE)
    assert data.scan_path(51) == release / "ct_scans" / "051.nii"


def test_hu_goes_through_nifti_scaling(release: Path) -> None:
    raw = np.random.default_rng(0).integers(0, 600, (*SHAPE, 4)).astype(np.int16)
    image = nib.Nifti1Image(raw, AFFINE)
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, release / "ct_scans" / "007.nii")
    hu = PhysioNetRelease.open(release).load_patient(7).hu
    np.testing.assert_array_equal(hu, raw.astype(np.float32) * 2 - 1024)


def test_accepts_gz_255_masks_and_any_name_case(tmp_path: Path) -> None:
    root = build(
        tmp_path / "r",
        scans="CT_Scans",
        masks="Masks",
        csv_name="Hemorrhage_Diagnosis_Raw_CT.csv",
        suffix=".nii.gz",
        mask_value=255,
    )
    data = PhysioNetRelease.open(root)
    volume = data.load_patient(7)
    np.testing.assert_array_equal(volume.mask, mask_of(ICH[7]) > 0)
    assert data.mask_path(7).name == "007.nii.gz"


DEMOGRAPHICS = """Patient Number,"Age
(years)",Gender,Hemorrhage type,,,,,Fracture (yes 1/no 0),Note
,,,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,,
49,35,Male,0,0,0,1,0,1,
50,1,Female,0,1,0,0,0,0,chronic
,,,,,,,,,
Total,,,0,1,0,1,0,1,
Mean age,18,,,,,,,,
"""


def test_demographics_merged_header_and_footer(release: Path) -> None:
    assert PhysioNetRelease.open(release).read_demographics() == []
    (release / "Patient_demographics.csv").write_text(DEMOGRAPHICS)
    rows = PhysioNetRelease.open(release).read_demographics()
    assert [row["Patient Number"] for row in rows] == ["49", "50"]
    assert rows[1] == {
        "Patient Number": "50",
        "Age (years)": "1",
        "Gender": "Female",
        "Hemorrhage type Intraventricular": "0",
        "Hemorrhage type Intraparenchymal": "1",
        "Hemorrhage type Subarachnoid": "0",
        "Hemorrhage type Epidural": "0",
        "Hemorrhage type Subdural": "0",
        "Fracture (yes 1/no 0)": "0",
        "Note": "chronic",
    }


def rewrite_csv(root: Path, change) -> None:
    """Apply `change` to the CSV rows of the release and write them back."""
    rows = csv_rows(ICH)
    change(rows)
    write_csv(root / CSV_NAME, rows)


def _drop_column(root: Path) -> None:
    header = tuple(c for c in LABEL_CSV_COLUMNS if c != "Epidural")
    rows = [row[:5] + row[6:] for row in csv_rows(ICH)]
    write_csv(root / CSV_NAME, rows, header)


def _set_cell(value: str):
    return lambda root: rewrite_csv(root, lambda rows: rows[1].__setitem__(6, value))


OPEN_ERRORS = {
    "csv missing": (lambda root: (root / CSV_NAME).unlink(), ["missing", CSV_NAME]),
    "empty csv": (lambda root: (root / CSV_NAME).write_text(""), [CSV_NAME, "empty"]),
    "header only": (lambda root: write_csv(root / CSV_NAME, []), [CSV_NAME, "no data rows"]),
    "missing column": (_drop_column, [CSV_NAME, "missing column", "Epidural"]),
    "non-integer cell": (_set_cell("x"), [CSV_NAME, "line 3", "Subdural", "'x'"]),
    "non-binary cell": (_set_cell("2"), [CSV_NAME, "line 3", "Subdural", "0 or 1", "'2'"]),
    "duplicate row": (
        lambda root: rewrite_csv(root, lambda rows: rows.append(rows[1])),
        [CSV_NAME, "duplicate", "patient 7 slice 2"],
    ),
    "slice gap": (
        lambda root: rewrite_csv(root, lambda rows: rows.pop(5)),
        [CSV_NAME, "patient 51", "1..2"],
    ),
    "subtype on clean slice": (
        lambda root: rewrite_csv(root, lambda rows: rows[0].__setitem__(3, 1)),
        [CSV_NAME, "line 2", "No_Hemorrhage=1", "Intraparenchymal"],
    ),
    "no scan": (
        lambda root: (root / "ct_scans" / "051.nii").unlink(),
        ["patient 51", "no scan", "ct_scans/051.nii"],
    ),
    "no mask": (
        lambda root: (root / "masks" / "007.nii").unlink(),
        ["patient 7", "no mask", "masks/007.nii"],
    ),
    "no mask folder": (
        lambda root: shutil.rmtree(root / "masks"),
        ["patient 7", "no mask", "masks/007.nii"],
    ),
}


@pytest.mark.parametrize("case", OPEN_ERRORS)
def test_open_rejects_bad_release(release: Path, case: str) -> None:
    damage, fragments = OPEN_ERRORS[case]
    damage(release)
    with pytest.raises(IchsegError) as info:
        PhysioNetRelease.open(release)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_hemorrhage_without_subtype_is_kept(release: Path) -> None:
    # The mask follows No_Hemorrhage; an unnamed subtype loses no segmentation label.
    rewrite_csv(release, lambda rows: rows[1].__setitem__(5, 0))
    label = PhysioNetRelease.open(release).labels_for(7)[1]
    assert label.has_ich and not any(label.subtypes)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_scan(path: Path) -> None:
    scan = scan_of(7, 4).astype(np.float32)
    scan[0, 0, 0], scan[1, 1, 1] = np.nan, np.inf
    save(scan, path)


LOAD_ERRORS = {
    "mask shape": (
        lambda scan, mask: save(np.zeros((*SHAPE[::-1], 4), np.uint8), mask),
        ["masks/007.nii", "shape (18, 20, 4)", "ct_scans/007.nii", "(20, 18, 4)"],
    ),
    "mask affine": (
        lambda scan, mask: save(mask_of(ICH[7]), mask, AFFINE * 1.1),
        ["masks/007.nii", "affine", "ct_scans/007.nii"],
    ),
    "depth": (
        lambda scan, mask: (save(scan_of(7, 5), scan), save(mask_of((0, 1, 1, 0, 0)), mask)),
        ["ct_scans/007.nii", "lists 4 slices", "patient 7", "has 5"],
    ),
    "mask on clean slice": (
        lambda scan, mask: save(mask_of((1, 1, 1, 0)), mask),
        ["masks/007.nii", "slice 1 has 6 mask voxels", "No_Hemorrhage=1", "patient 7"],
    ),
    "empty mask on hemorrhage slice": (
        lambda scan, mask: save(mask_of((0, 1, 0, 0)), mask),
        ["masks/007.nii", "slice 3 has an empty mask", "No_Hemorrhage=0", "patient 7"],
    ),
    "truncated": (lambda scan, mask: _truncate(scan), ["ct_scans/007.nii", "cannot read"]),
    "not nifti": (
        lambda scan, mask: scan.write_bytes(os.urandom(4000)),
        ["ct_scans/007.nii", "cannot read"],
    ),
    "2d": (
        lambda scan, mask: save(np.zeros(SHAPE, np.int16), scan),
        ["ct_scans/007.nii", "3-D", "(20, 18)"],
    ),
    "4d": (
        lambda scan, mask: save(np.zeros((*SHAPE, 4, 2), np.int16), scan),
        ["ct_scans/007.nii", "3-D", "(20, 18, 4, 2)"],
    ),
    "nan": (lambda scan, mask: _nan_scan(scan), ["ct_scans/007.nii", "2 voxels", "NaN"]),
}


@pytest.mark.parametrize("case", LOAD_ERRORS)
def test_load_patient_rejects_bad_volumes(release: Path, case: str) -> None:
    damage, fragments = LOAD_ERRORS[case]
    damage(release / "ct_scans" / "007.nii", release / "masks" / "007.nii")
    data = PhysioNetRelease.open(release)
    data.load_patient(51)  # the other patient is untouched
    with pytest.raises(IchsegError) as info:
        data.load_patient(7)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_truncated_gz_is_reported(tmp_path: Path) -> None:
    root = build(tmp_path / "r", suffix=".nii.gz")
    _truncate(root / "masks" / "051.nii.gz")
    with pytest.raises(IchsegError, match=r"masks/051\.nii\.gz: cannot read"):
        PhysioNetRelease.open(root).load_patient(51)


def test_trailing_singleton_axis_is_one_volume(release: Path) -> None:
    save(scan_of(7, 4)[..., None], release / "ct_scans" / "007.nii")
    assert PhysioNetRelease.open(release).load_patient(7).hu.shape == (*SHAPE, 4)


def test_root_must_be_a_non_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(IchsegError, match="does not exist"):
        PhysioNetRelease.open(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(IchsegError, match="not a folder"):
        PhysioNetRelease.open(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IchsegError, match="empty"):
        PhysioNetRelease.open(tmp_path / "empty")


def test_unknown_patient(release: Path) -> None:
    with pytest.raises(IchsegError, match="patient 8 is not in"):
        PhysioNetRelease.open(release).load_patient(8)


def test_load_is_fast(tmp_path: Path) -> None:
    import time

    scan = np.full((512, 512, 40), -1000, np.int16)
    scan[100:400, 80:420] = 40
    save(scan, tmp_path / "r" / "ct_scans" / "049.nii")
    save(np.zeros((512, 512, 40), np.uint8), tmp_path / "r" / "masks" / "049.nii")
    write_csv(tmp_path / "r" / CSV_NAME, csv_rows({49: (0,) * 40}))
    data = PhysioNetRelease.open(tmp_path / "r")
    start = time.perf_counter()
    data.load_patient(49)
    assert time.perf_counter() - start < 1.0


def test_volumes_are_reoriented_from_the_affine_keeping_slice_numbers(tmp_path: Path) -> None:
    """A release stored right-to-left and posterior-to-anterior, slices running foot-ward, is
    read in the training orientation; CSV slice k stays volume slice k."""
    stored = np.diag([0.4, -0.45, -5.0, 1.0])
    root = tmp_path / "release"
    flags = ICH[7]
    scan, mask = scan_of(7, len(flags)), mask_of(flags)
    save(scan, root / "ct_scans" / "007.nii", stored)
    save(mask, root / "masks" / "007.nii", stored)
    write_csv(root / CSV_NAME, csv_rows({7: flags}))
    volume = PhysioNetRelease.open(root).load_patient(7)
    np.testing.assert_array_equal(volume.hu, scan[::-1, ::-1, :].astype(np.float32))
    np.testing.assert_array_equal(volume.mask, mask[::-1, ::-1, :] > 0)
    # Voxel (i, j, k) of the result sits where the stored voxel (X-1-i, Y-1-j, k) did.
    x, y = SHAPE[0] - 1, SHAPE[1] - 1
    np.testing.assert_allclose(volume.affine @ [0, 0, 2, 1], stored @ [x, y, 2, 1])
    assert volume.zooms == pytest.approx((0.4, 0.45, 5.0))
