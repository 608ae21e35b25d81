"""Synthetic scans written as a CT scanner's DICOM export: one file per slice, with pydicom.

`write_series` turns an HU volume `[column, row, slice]` into a series whose geometry the test
controls (direction cosines, spacing, gantry tilt, missing slices), stored as int16 through a
non-unit rescale, with file names and `InstanceNumber`s in shuffled order and a deliberately
wrong `SliceThickness`, so a reader that trusts any of those gets the volume wrong.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ZOOMS = (0.5, 0.4, 5.0)  # column spacing, row spacing, slice step (mm), as tests/helpers/scans
STUDY_UID = generate_uid(entropy_srcs=["ichseg synthetic study"])


def synthetic_uid(*names: object) -> str:
    """A UID made from `names`: the same every run, so messages quoting it do not change."""
    return generate_uid(entropy_srcs=[str(n) for n in names])


def series_affine_lps(
    zooms: Sequence[float] = ZOOMS,
    row_dir: Sequence[float] = (1, 0, 0),
    col_dir: Sequence[float] = (0, 1, 0),
    origin: Sequence[float] = (-10.0, -20.0, 30.0),
) -> np.ndarray:
    """The LPS affine of the series `write_series` writes with these settings (no tilt)."""
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * zooms[0]
    affine[:3, 1] = col_dir * zooms[1]
    affine[:3, 2] = np.cross(row_dir, col_dir) * zooms[2]
    affine[:3, 3] = origin
    return affine


def write_series(
    folder: Path,
    hu: np.ndarray,
    *,
    zooms: Sequence[float] = ZOOMS,
    row_dir: Sequence[float] = (1, 0, 0),
    col_dir: Sequence[float] = (0, 1, 0),
    origin: Sequence[float] = (-10.0, -20.0, 30.0),
    slope: float = 2.0,
    intercept: float = -1024.0,
    tilt_deg: float = 0.0,
    drop: Sequence[int] = (),
    modality: str = "CT",
    description: str = "Head 5mm",
    series_uid: str | None = None,
    series_number: int = 2,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    transfer_syntax: str = ExplicitVRLittleEndian,
    first_slice: int = 0,
    prefix: str = "IM",
    seed: int = 0,
    leave_out: Sequence[str] = (),
) -> list[Path]:
    """Write `hu` ([column, row, slice], HU) as a DICOM CT series of single-slice files in
    `folder`; slice k lies at `origin + k * step` (the step along the slice normal, tilted by
    `tilt_deg` towards the column direction). `drop` leaves slices out, `leave_out` these
    attributes (by keyword: absent, as de-identification tools leave them). Returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    step = zooms[2] * (normal + math.tan(math.radians(tilt_deg)) * col_dir)
    series_uid = series_uid or synthetic_uid(description, modality, prefix, seed)
    frame_uid = synthetic_uid(series_uid, "frame of reference")
    kept = [k for k in range(hu.shape[2]) if k not in drop]
    order = np.random.default_rng(seed).permutation(len(kept))
    paths = []
    for rank, k in zip(order, kept, strict=True):
        stored = np.rint((hu[:, :, k] - intercept) / slope).astype(np.int16).T  # (rows, cols)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        uid = synthetic_uid(series_uid, k + first_slice, prefix)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.SOPClassUID = CTImageStorage
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientID = "SYN0001"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = STUDY_UID
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.Modality = modality
        ds.Manufacturer = "Synthetic"
        ds.FrameOfReferenceUID = frame_uid
        ds.ImageType = list(image_type)
        # Shuffled, so sorting by InstanceNumber (or by file name) gives the wrong order.
        ds.InstanceNumber = int(rank) + 1
        ds.ImagePositionPatient = [
            round(float(v), 4) for v in np.asarray(origin) + (k + first_slice) * step
        ]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [zooms[1], zooms[0]]
        ds.SliceThickness = 1.0  # not the spacing: a reader must take it from the positions
        ds.GantryDetectorTilt = tilt_deg
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.RescaleType = "HU"
        data = stored.tobytes()
        # A compressed syntax declared over raw bytes: the reader must refuse it from the header.
        ds.PixelData = encapsulate([data]) if ds.file_meta.TransferSyntaxUID.is_compressed else data
        for keyword in leave_out:
            delattr(ds, keyword)
        path = folder / f"{prefix}{int(rank):04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def zip_folder(folder: Path, archive: Path) -> Path:
    """The files of `folder` in a zip, under a subfolder as a PACS export has them."""
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out.write(path, f"DICOM/{path.relative_to(folder)}")
    return archive


def read_positions(paths: Sequence[Path]) -> dict[str, np.ndarray]:
    """Each file's ImagePositionPatient, read with pydicom: the independent side of the tests."""
    return {str(p): np.array(pydicom.dcmread(p).ImagePositionPatient, dtype=float) for p in paths}
