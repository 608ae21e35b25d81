"""DICOM CT series of `ichseg predict`: a folder or a zip read into the same `Scan` as a NIfTI.

A series becomes an HU volume in DICOM's natural array order, `[column, row, slice]` (the
transpose of each slice's pixel array, the slices sorted by their position along the slice
normal), with the NIfTI-convention affine of that array. Reorientation, prediction, the summary
and the NIfTI mask are then the NIfTI path's own code.

Geometry (DICOM PS3.3 C.7.6.2.1.1): `ImageOrientationPatient` holds the row direction `r` (the
direction in which the column index grows) and the column direction `c`, `PixelSpacing` the
(row spacing, column spacing) in mm, `ImagePositionPatient` the centre of the first pixel; all
in the patient's LPS+ frame (x towards the patient's left, y posterior, z superior). The slice
normal is `n = r × c`; slices are sorted by `ImagePositionPatient · n` (never by file name or
`InstanceNumber`) and the slice step is the mean step between the first and last position
(never `SliceThickness`). The LPS affine of voxel `[i, j, k]` has columns `r · PixelSpacing[1]`,
`c · PixelSpacing[0]`, the slice step and the first slice's position; NIfTI's world is RAS+, so
the RAS affine is the LPS one with its first two rows negated (`lps_to_ras`).

Refused in one line naming the file or tag: no DICOM image, no CT series, several CT series
without `--series`, mixed image sizes, orientations or pixel spacings, a single slice, two slices
at one position, uneven slice spacing (`MAX_SPACING_DEVIATION`, e.g. a missing slice), slice
positions off one line, gantry tilt (`MAX_TILT_DEG`) unless `resample_tilt`, multi-frame images,
non-HU rescaling and compressed pixel data that the installed pydicom handlers cannot decode.
Localizer and non-axial images (`ImageType` value 3 not AXIAL) are left out of series choice.

Gantry tilt shears the grid: each slice is shifted in-plane by a constant step from the one
before. With `resample_tilt` every slice is shifted back (linear interpolation, `AIR_HU` where
it leaves the field of view) onto the orthogonal grid whose third axis is the slice normal, with
the slices' own plane spacing; the affine is that grid's, and the slices keep their planes.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID
from scipy import ndimage

from ichseg.data.orientation import reorientation
from ichseg.errors import IchsegError, first_line
from ichseg.inference.nifti_io import Scan

ZIP_SUFFIX = ".zip"
# The transfer syntax of a file without one in its meta header (DICOM PS3.5 A.1).
IMPLICIT_VR = "1.2.840.10008.1.2"
# Beyond this relative deviation of one slice step from the median step the series is refused
# (a missing slice doubles a step; scanners write positions to a few hundredths of a mm).
MAX_SPACING_DEVIATION = 0.02
# A slice may lie this fraction of a pixel off the line through the first and last positions.
MAX_OFF_LINE_PX = 0.1
# Slice steps more than this angle from the slice normal are gantry tilt (a sheared grid).
MAX_TILT_DEG = 0.1
# What a tilted slice shifted back onto the orthogonal grid holds where it had no pixels.
AIR_HU = -1024.0
# Direction cosines of the images in one series agree to this much.
ORIENTATION_ATOL = 1e-4
# What flipping LPS+ (DICOM) into RAS+ (NIfTI) multiplies an affine by.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Errors pydicom raises on a file that is not (complete) DICOM.
_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError)


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """The NIfTI (RAS+) affine of a DICOM (LPS+) affine: its first two rows negated."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)


def is_dicom_input(path: str | os.PathLike) -> bool:
    """True for what is read as a DICOM series: a folder or a `.zip` file."""
    path = Path(path)
    return path.is_dir() or path.name.lower().endswith(ZIP_SUFFIX)


@dataclass
class _File:
    """One file of a folder or zip: its name in messages and a reader of its dataset."""

    label: str
    read: Callable[[bool], Dataset]


@dataclass
class DicomSeries:
    """One CT series as read: its headers (no pixel data) sorted along the slice normal."""

    source: Path
    uid: str
    description: str
    headers: list[Dataset]
    excluded_images: int
    slice_step_mm: float
    # The LPS affine of the scan's grid (the source images' own, or the resampled one).
    lps_affine: np.ndarray
    gantry_tilt_deg: float = 0.0
    # Gantry tilt resampled: the in-plane shift (column, row pixels) of slice k is k times this.
    tilt_shift_px: tuple[float, float] | None = None
    _files: list[_File] = field(repr=False, default_factory=list)

    @property
    def labels(self) -> list[str]:
        """The files' names in messages, in slice order."""
        return [f.label for f in self._files]

    @property
    def stem(self) -> str:
        """The folder's name, or the zip's without `.zip`: the outputs' names."""
        name = self.source.name
        return name[: -len(ZIP_SUFFIX)] if name.lower().endswith(ZIP_SUFFIX) else name

    def read_hu(self) -> np.ndarray:
        """The voxels in HU, float32 `[column, row, slice]`, through each file's rescale."""
        first = self.headers[0]
        shape = (int(first.Columns), int(first.Rows))
        hu = np.empty((*shape, len(self._files)), dtype=np.float32)
        for k, f in enumerate(self._files):
            try:
                dataset = f.read(False)
                pixels = dataset.pixel_array
            except Exception as err:  # pydicom's decoders raise many types: one line for any
                raise IchsegError(
                    f"scan {f.label}: cannot decode the pixel data ({first_line(err)})"
                ) from None
            if pixels.shape != (shape[1], shape[0]):
                raise IchsegError(
                    f"scan {f.label}: expected one {shape[1]}×{shape[0]} grey image, found pixel "
                    f"data of shape {pixels.shape}"
                )
            hu[:, :, k] = apply_modality_lut(pixels, dataset).T
            if self.tilt_shift_px is not None and k:
                shift = (k * self.tilt_shift_px[0], k * self.tilt_shift_px[1])
                hu[:, :, k] = ndimage.shift(hu[:, :, k], shift, order=1, cval=AIR_HU)
        return hu

    def instances(self, slices: Sequence[int]) -> list[dict]:
        """The source images of these 1-based slice numbers: what a DICOM viewer shows."""
        return [
            {
                "slice": int(n),
                "instance_number": self.headers[n - 1].get("InstanceNumber"),
                "sop_instance_uid": str(self.headers[n - 1].SOPInstanceUID),
            }
            for n in slices
        ]

    def describe(self) -> dict:
        """The series' identity for a JSON summary."""
        first = self.headers[0]
        return {
            "study_instance_uid": str(first.get("StudyInstanceUID", "")),
            "series_instance_uid": self.uid,
            "series_description": self.description,
            "n_files": len(self.headers),
            "excluded_localizer_or_non_axial": self.excluded_images,
            "slice_step_mm": round(self.slice_step_mm, 6),
            "gantry_tilt_deg": round(self.gantry_tilt_deg, 3),
            "resampled_for_tilt": self.tilt_shift_px is not None,
        }


def _files_in(source: Path) -> list[_File]:
    """Every regular file of a folder (recursively, hidden names left out) or a zip."""
    if source.is_dir():

        def reader(path: Path) -> Callable[[bool], Dataset]:
            return lambda headers_only: pydicom.dcmread(path, stop_before_pixels=headers_only)

        paths = sorted(
            p
            for p in source.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
        )
        return [_File(str(p), reader(p)) for p in paths]
    if not source.is_file():
        raise IchsegError(f"scan {source}: expected a DICOM folder or zip, found nothing")
    try:
        with zipfile.ZipFile(source) as archive:
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as err:
        raise IchsegError(f"scan {source}: cannot read as a zip ({first_line(err)})") from None

    def member(name: str) -> Callable[[bool], Dataset]:
        def read(headers_only: bool) -> Dataset:
            with zipfile.ZipFile(source) as archive:
                blob = archive.read(name)
            return pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=headers_only)

        return read

    names = [n for n in names if not any(p.startswith(".") for p in Path(n).parts)]
    return [_File(f"{source}:{n}", member(n)) for n in sorted(names)]


def _excluded(header: Dataset) -> bool:
    """True for a localizer or a non-axial image (`ImageType` value 3), left out of series."""
    image_type = [str(v).upper() for v in header.get("ImageType", [])]
    return "LOCALIZER" in image_type or (len(image_type) >= 3 and image_type[2] != "AXIAL")


def _series_line(uid: str, group: list[tuple[_File, Dataset]]) -> str:
    """`UID 'description' (N slices)` of a series, for a refusal listing the choices."""
    description = str(group[0][1].get("SeriesDescription", "")).strip()
    modality = str(group[0][1].get("Modality", "?"))
    return f"{uid} {modality} {description!r} ({len(group)} images)"


def open_dicom(
    path: str | os.PathLike, series: Sequence[str] = (), resample_tilt: bool = False
) -> Scan:
    """Read the CT series of a DICOM folder or zip into a `Scan`: the one of `series` it holds,
    else its only CT series. Resampled onto an orthogonal grid if tilted and `resample_tilt`;
    IchsegError naming the file or tag for anything unsafe."""
    source = Path(path)
    files = _files_in(source)
    groups: dict[str, list[tuple[_File, Dataset]]] = {}
    not_dicom = excluded = 0
    for f in files:
        try:
            header = f.read(True)
        except _READ_ERRORS:
            not_dicom += 1
            continue
        if "Rows" not in header or "SOPClassUID" not in header:
            continue  # DICOMDIR, structured reports, presentation states: not images
        if _excluded(header):
            excluded += 1
            continue
        groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((f, header))
    if not groups:
        left_out = f", {excluded} localizer or non-axial image(s) left out" if excluded else ""
        raise IchsegError(
            f"scan {source}: expected a DICOM series, found no DICOM image among {len(files)} "
            f"file(s) ({not_dicom} not DICOM{left_out})"
        )
    ct = {uid: g for uid, g in groups.items() if str(g[0][1].get("Modality", "")) == "CT"}
    chosen = [uid for uid in groups if uid in series]
    if len(chosen) > 1:
        raise IchsegError(f"scan {source}: holds several of --series: {', '.join(chosen)}")
    if chosen:
        uid = chosen[0]
    elif not ct:
        first = next(iter(groups.values()))[0]
        raise IchsegError(
            f"scan {first[0].label}: expected Modality CT, found "
            f"{first[1].get('Modality', 'none')!s} (series: "
            + "; ".join(_series_line(uid, g) for uid, g in groups.items())
            + ")"
        )
    elif len(ct) > 1:
        raise IchsegError(
            f"scan {source}: holds {len(ct)} CT series; pick one with --series UID: "
            + "; ".join(_series_line(uid, g) for uid, g in ct.items())
        )
    else:
        uid = next(iter(ct))
    group = groups[uid]
    for f, header in group:
        if str(header.get("Modality", "")) != "CT":
            raise IchsegError(
                f"scan {f.label}: expected Modality CT, found {header.get('Modality', 'none')}"
            )
    return _scan(source, uid, group, excluded, resample_tilt)


def _vector(header: Dataset, keyword: str, size: int, label: str) -> np.ndarray:
    """A numeric multi-valued tag as floats, or IchsegError naming the file and tag."""
    value = header.get(keyword)
    try:
        out = np.array([float(v) for v in value], dtype=float) if value is not None else None
    except (TypeError, ValueError):
        out = None
    if out is None or out.shape != (size,) or not np.all(np.isfinite(out)):
        raise IchsegError(f"scan {label}: expected {keyword} with {size} numbers, found {value!r}")
    return out


def _same(group: list[tuple[_File, Dataset]], what: str, value: Callable[[_File, Dataset], object]):
    """`value` of the series' files, or IchsegError naming two files where it differs."""
    first_file, first = group[0]
    expected = value(first_file, first)
    for f, header in group[1:]:
        found = value(f, header)
        if found != expected:
            raise IchsegError(
                f"scan {f.label}: mixed {what} in one series: {found} here, {expected} in "
                f"{first_file.label}"
            )
    return expected


def _scan(
    source: Path,
    uid: str,
    group: list[tuple[_File, Dataset]],
    excluded: int,
    resample_tilt: bool,
) -> Scan:
    """Check the series' geometry, sort its slices, read HU and build the `Scan`."""
    if len(group) < 2:
        raise IchsegError(
            f"scan {group[0][0].label}: series {uid} has a single slice; expected at least 2 "
            "(the slice spacing comes from their positions)"
        )
    for f, header in group:
        frames = int(header.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise IchsegError(
                f"scan {f.label}: a multi-frame image ({frames} frames); expected single-slice "
                "CT images (export the series as classic single-frame CT)"
            )
    _same(group, "image sizes (Rows×Columns)", lambda f, h: f"{int(h.Rows)}×{int(h.Columns)}")
    rows, cols = int(group[0][1].Rows), int(group[0][1].Columns)
    orientations = [_vector(h, "ImageOrientationPatient", 6, f.label) for f, h in group]
    for (f, _), found in zip(group[1:], orientations[1:], strict=True):
        if not np.allclose(found, orientations[0], atol=ORIENTATION_ATOL):
            raise IchsegError(
                f"scan {f.label}: mixed image orientations (ImageOrientationPatient) in one "
                f"series: {found.round(4).tolist()} here, {orientations[0].round(4).tolist()} in "
                f"{group[0][0].label}"
            )
    spacing = _same(
        group,
        "pixel spacings (PixelSpacing)",
        lambda f, h: tuple(float(v) for v in _vector(h, "PixelSpacing", 2, f.label).round(6)),
    )
    label = group[0][0].label
    orientation = orientations[0]
    row_dir, col_dir = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3:
        raise IchsegError(
            f"scan {label}: ImageOrientationPatient {orientation.tolist()} is not two unit vectors"
        )
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise IchsegError(
            f"scan {label}: ImageOrientationPatient {orientation.tolist()}: rows and columns "
            "are not perpendicular"
        )
    if min(spacing) <= 0:
        raise IchsegError(f"scan {label}: PixelSpacing {list(spacing)} is not positive mm")
    normal = np.cross(row_dir, col_dir)
    positions = np.array(
        [_vector(h, "ImagePositionPatient", 3, f.label) for f, h in group], dtype=float
    )
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    group = [group[i] for i in order]
    positions, along = positions[order], along[order]
    steps = np.diff(along)
    same_place = np.flatnonzero(steps <= 1e-3 * max(spacing))
    if same_place.size:
        i = int(same_place[0])
        raise IchsegError(
            f"scan {group[i + 1][0].label}: at the same position along the slice normal as "
            f"{group[i][0].label} ({along[i]:.3f} mm); expected one slice per position"
        )
    typical = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - typical)))
    if abs(steps[worst] - typical) > MAX_SPACING_DEVIATION * typical:
        raise IchsegError(
            f"scan {group[worst + 1][0].label}: uneven slice spacing: {steps[worst]:.3f} mm from "
            f"{group[worst][0].label}, where the series' median step is {typical:.3f} mm "
            f"(a missing slice?); expected every step within {MAX_SPACING_DEVIATION:.0%} of it"
        )
    step = (positions[-1] - positions[0]) / (len(group) - 1)
    mean_step = float(step @ normal)
    in_plane = step - mean_step * normal
    tilt = math.degrees(math.atan2(float(np.linalg.norm(in_plane)), mean_step))
    if tilt > MAX_TILT_DEG and not resample_tilt:
        tag = group[0][1].get("GantryDetectorTilt")
        said = f", GantryDetectorTilt {tag}" if tag is not None else ""
        raise IchsegError(
            f"scan {source}: gantry tilt: the slices step {np.linalg.norm(in_plane):.3f} mm "
            f"in-plane per {mean_step:.3f} mm along the slice normal ({tilt:.2f} degrees{said}); "
            f"expected an orthogonal grid (at most {MAX_TILT_DEG} degrees); pass "
            "--resample-tilt to resample it onto one"
        )
    expected = positions[0] + np.arange(len(group))[:, None] * step
    off = np.abs((positions - expected) @ np.stack([row_dir, col_dir]).T) / np.array(spacing[::-1])
    if off.max() > MAX_OFF_LINE_PX:
        k = int(np.argmax(off.max(axis=1)))
        raise IchsegError(
            f"scan {group[k][0].label}: ImagePositionPatient {positions[k].tolist()} lies "
            f"{off[k].max():.2f} pixels off the line of the series' other slices"
        )
    shift = None
    if tilt > MAX_TILT_DEG:
        # Slice k's pixel (i, j) lies where the orthogonal grid has (i + k a, j + k b).
        shift = (float(in_plane @ row_dir) / spacing[1], float(in_plane @ col_dir) / spacing[0])
        step = mean_step * normal
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]
    lps[:3, 1] = col_dir * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = lps_to_ras(lps)
    turn = reorientation(affine, f"scan {source}")
    for f, header in group:
        _check_rescale(f.label, header)
        _check_decodable(f.label, header)
    shape = (cols, rows, len(group))
    # A header-only image: the mask is written with its geometry, the voxels come from `read_hu`.
    image = nib.Nifti1Image(np.broadcast_to(np.int16(0), shape), affine)
    image.header.set_xyzt_units("mm")
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    dicom = DicomSeries(
        source=source,
        uid=uid,
        description=str(group[0][1].get("SeriesDescription", "")).strip(),
        headers=[h for _, h in group],
        excluded_images=excluded,
        slice_step_mm=mean_step,
        lps_affine=lps,
        gantry_tilt_deg=tilt,
        tilt_shift_px=shift,
        _files=[f for f, _ in group],
    )
    return Scan(source, image, shape, zooms, turn, dicom=dicom)  # type: ignore[arg-type]


def _check_rescale(label: str, header: Dataset) -> None:
    """Raise unless the file's stored values convert to HU."""
    rescale = str(header.get("RescaleType", "HU")).strip().upper() or "HU"
    if rescale != "HU":
        raise IchsegError(f"scan {label}: expected RescaleType HU, found {rescale}")
    if "RescaleIntercept" not in header or "RescaleSlope" not in header:
        raise IchsegError(
            f"scan {label}: no RescaleSlope (0028,1053) / RescaleIntercept (0028,1052); "
            "cannot convert the stored values to HU"
        )


def _check_decodable(label: str, header: Dataset) -> None:
    """Raise when the file's transfer syntax is compressed and no installed handler decodes it."""
    meta = getattr(header, "file_meta", None) or Dataset()
    syntax = UID(str(meta.get("TransferSyntaxUID", IMPLICIT_VR)))
    if not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
        missing = [] if decoder.is_available else decoder.missing_dependencies
    except NotImplementedError:
        missing = ["pydicom has no decoder for it"]
    if missing:
        raise IchsegError(
            f"scan {label}: compressed pixel data ({syntax.name}, transfer syntax {syntax}) that "
            f"the installed pydicom handlers cannot decode ({'; '.join(missing)}); decompress "
            "the series (e.g. dcmdjpeg, gdcmconv --raw) or install a handler"
        )
