"""DICOM CT series of `ichseg predict`: a folder or a zip read into a `Scan` (`DicomScan`).

A series becomes an HU volume in DICOM's natural array order, `[column, row, slice]` (the
transpose of each slice's pixel array, the slices sorted by their position along the slice
normal), with the NIfTI-convention affine of that array. Reorientation, prediction, the summary
and the NIfTI mask are then the same as a NIfTI file's; the summary describes the series
(`DicomScan.describe`), outputs record its SeriesInstanceUID, and a DICOM SEG of the prediction
is written from its headers (`ichseg.scans.dicom_seg`).

Geometry (DICOM PS3.3 C.7.6.2.1.1): `ImageOrientationPatient` holds the row direction `r` (the
direction in which the column index grows) and the column direction `c`, `PixelSpacing` the
(row spacing, column spacing) in mm, `ImagePositionPatient` the centre of the first pixel; all
in the patient's LPS+ frame (x towards the patient's left, y posterior, z superior). The slice
normal is `n = r × c`; slices are sorted by `ImagePositionPatient · n` (never by file name or
`InstanceNumber`) and the slice step is the mean step between the first and last position
(never `SliceThickness`). The LPS affine of voxel `[i, j, k]` has columns `r · PixelSpacing[1]`,
`c · PixelSpacing[0]`, the slice step and the first slice's position; NIfTI's world is RAS+, so
the RAS affine is the LPS one with its first two rows negated (`lps_to_ras`).

Every file is accounted for (`DicomScan.describe`). A file is DICOM when it holds `DICM` after
its 128-byte preamble, or, written without preamble, starts with a data element of group 0002
or 0008 (then read with pydicom's `force`). A file that looks like DICOM but cannot be read is
unreadable (`_read_header`): its header does not parse, ends inside its file meta or names no
SOP class; an image lacks an Image Pixel attribute (`IMAGE_PIXEL_KEYWORDS`), has no pixel data,
or holds fewer pixel bytes than Rows × Columns × SamplesPerPixel × frames × BitsAllocated / 8
(a copy cut short); also a file named `.dcm`, `.dicom`, `.dic` or `.ima` that holds no DICOM
data, and a file without suffix (or with a numeric one) shorter than preamble and prefix, zero
up to where `DICM` would start. An input with unreadable files is refused naming them, unless
`allow_unreadable`: then they are left out and the JSON lists them. Other files are not DICOM,
and non-image objects (DICOMDIR, reports) are not images: both are counted and left out.

Series choice is by geometry, whatever the writer put in `ImageType`: a localizer (`ImageType`
LOCALIZER) and an image whose slice normal lies more than `MAX_AXIAL_DEG` from the patient's z
(head-foot) axis are left out, and so is a series none of whose images has
`ImageOrientationPatient` (screen captures such as dose reports). Multi-frame images (enhanced
CT) stay in, so that choosing their series is refused naming them.

Refused in one line naming the file or tag: no DICOM image, no CT series, several CT series
without `--series`, unreadable files, multi-frame (enhanced) images, mixed image sizes,
orientations or pixel spacings, a single slice, two slices at one position, uneven slice spacing
(`MAX_SPACING_DEVIATION`, e.g. a missing slice), slice positions off one line, gantry tilt
(`MAX_TILT_DEG`) unless `resample_tilt`, a rescale to other units than HU, and compressed pixel
data that the installed pydicom handlers cannot decode. `RescaleType` US (unspecified), which
GDCM and ITK write for CT, is taken as HU for a CT series and recorded as such; the HU check of
the voxels (`ichseg.scans.hounsfield`) still applies.

Each pass over the files (headers, then pixels) opens a zip once, and a file that is not DICOM
is read no further than the 132 bytes that tell.

Gantry tilt shears the grid: each slice is shifted in-plane by a constant step from the one
before. With `resample_tilt` every slice is shifted back (linear interpolation, `AIR_HU` where
it leaves the field of view) onto the orthogonal grid whose third axis is the slice normal, with
the slices' own plane spacing; the affine is that grid's, and the slices keep their planes.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import (
    UID,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from scipy import ndimage

from ichseg.errors import IchsegError, first_line
from ichseg.scans import dicom_seg
from ichseg.scans.nifti import NIFTI_SUFFIXES
from ichseg.scans.orientation import MAX_OBLIQUE_DEG, reorientation
from ichseg.scans.scan import SEG_NOT_ASKED, ReadOptions, Scan, SegPlan

ZIP_SUFFIX = ".zip"
# A DICOM file's 128-byte preamble and the prefix after it (DICOM PS3.10 7.1).
PREAMBLE = 128
PREFIX = b"DICM"
# Names that say a file is DICOM whatever it holds.
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
DICOMDIR = "DICOMDIR"
# Data elements a DICOM data set written without preamble starts with: file meta or identifying.
FIRST_GROUPS = (0x0002, 0x0008)
PIXEL_DATA_TAG = (0x7FE0, 0x0010)
# What an image needs to decode its pixels (the Image Pixel module's type 1 attributes).
IMAGE_PIXEL_KEYWORDS = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
)
UNDEFINED_LENGTH = 0xFFFFFFFF
# CT written as one multi-frame object, which this reader refuses by name.
ENHANCED_CT = (EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
# An image is axial when its slice normal lies at most this far from the patient's z axis: the
# same limit beyond which a volume's axis is too oblique to slice along (head CT is often tilted
# 20-30 degrees along the orbitomeatal line; coronal and sagittal normals are 90 degrees off).
MAX_AXIAL_DEG = MAX_OBLIQUE_DEG
# RescaleType "unspecified", which GDCM and ITK write for CT: taken as HU for a CT series.
UNSPECIFIED_RESCALE = "US"
# Unreadable files named in a refusal; the JSON lists them all.
SHOWN_UNREADABLE = 3
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
# Why files were left out, as the JSON counts them and a message says them.
LEFT_OUT = {
    "not_dicom": "not DICOM",
    "non_image_objects": "DICOM object(s) without an image (DICOMDIR, reports)",
    "localizer": "localizer(s)",
    "non_axial": f"non-axial image(s) (slice normal more than {MAX_AXIAL_DEG:g} degrees from "
    "the patient's head-foot axis)",
    "without_orientation": "image(s) of series without ImageOrientationPatient (screen captures)",
    "other_series": "image(s) of other series",
}


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """The NIfTI (RAS+) affine of a DICOM (LPS+) affine: its first two rows negated."""
    return LPS_TO_RAS @ np.asarray(affine, dtype=float)


def _single_dicom_file(path: Path) -> bool:
    """True for a file that is not NIfTI and is a DICOMDIR, is named as DICOM, or holds DICOM
    data (prefixed `DICM`, or a data set written without preamble)."""
    if not path.is_file() or path.name.lower().endswith(NIFTI_SUFFIXES):
        return False
    if path.name.upper() == DICOMDIR or path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fp:
            head = fp.read(PREAMBLE + len(PREFIX))
    except OSError:
        return False  # left to the NIfTI reader, which names the error
    return head[PREAMBLE:] == PREFIX or _starts_like_dataset(head)


@dataclass(frozen=True)
class _File:
    """One file of a folder or zip: its path or member name, its name in messages, its size."""

    key: str
    label: str
    size: int


class _Files:
    """The files of a DICOM folder or zip, open for one pass over them (a zip opened once)."""

    def __init__(self, source: Path, archive: zipfile.ZipFile | None) -> None:
        self.source = source
        self.archive = archive

    def listing(self) -> list[_File]:
        """Every regular file (a folder's recursively), hidden names left out, sorted by name."""
        if self.archive is None:
            paths = sorted(
                p
                for p in self.source.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(self.source).parts)
            )
            return [_File(str(p), str(p), p.stat().st_size) for p in paths]
        members = sorted(
            (i for i in self.archive.infolist() if not i.is_dir()), key=lambda i: i.filename
        )
        return [
            _File(i.filename, f"{self.source}:{i.filename}", i.file_size)
            for i in members
            if not any(part.startswith(".") for part in PurePosixPath(i.filename).parts)
        ]

    def open(self, f: _File) -> BinaryIO:
        """A binary stream of the file, positioned at its start."""
        if self.archive is None:
            return open(f.key, "rb")  # the caller closes it
        return self.archive.open(f.key)


@contextlib.contextmanager
def _opened(source: Path) -> Iterator[_Files]:
    """The folder or zip `source` opened for one pass; one line for a zip that cannot be read."""
    if source.is_dir():
        yield _Files(source, None)
        return
    if not source.is_file():
        raise IchsegError(f"scan {source}: expected a DICOM folder or zip, found nothing")
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as err:
        raise IchsegError(f"scan {source}: cannot read as a zip ({first_line(err)})") from None
    with archive:
        yield _Files(source, archive)


@dataclass
class DicomScan(Scan):
    """One CT series of a folder or zip (`path`) as read: its headers (no pixel data) sorted
    along the slice normal, and how every other file of its folder or zip was accounted for;
    `image` is a header-only image of its shape and affine, its voxels are read from its files."""

    uid: str
    description: str
    headers: list[Dataset]
    slice_step_mm: float
    # The LPS affine of the scan's grid (the source images' own, or the resampled one).
    lps_affine: np.ndarray
    gantry_tilt_deg: float = 0.0
    # Gantry tilt resampled: the in-plane shift (column, row pixels) of slice k is k times this.
    tilt_shift_px: tuple[float, float] | None = None
    # The series' RescaleType as its files have it (None when absent: HU by the standard).
    rescale_type: str | None = "HU"
    files_in_input: int = 0
    # Files of the input left out of the series, counted by reason (`LEFT_OUT`).
    left_out: dict[str, int] = field(default_factory=dict)
    # Files that looked like DICOM but could not be read, and why: left out when allowed.
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    _files: list[_File] = field(repr=False, default_factory=list)

    @staticmethod
    def reads(path: Path) -> bool:
        """True for what is read as DICOM: a folder, a `.zip`, or a single DICOM file (which
        `open` refuses, naming the folder to give instead)."""
        return path.is_dir() or path.name.lower().endswith(ZIP_SUFFIX) or _single_dicom_file(path)

    @classmethod
    def open(cls, path: Path, options: ReadOptions) -> DicomScan:
        """Read the CT series of a DICOM folder or zip: the one of `options.series` it holds,
        else its only CT series (`_read_series`)."""
        return _read_series(path, options.series, options.resample_tilt, options.allow_unreadable)

    @property
    def labels(self) -> list[str]:
        """The files' names in messages, in slice order."""
        return [f.label for f in self._files]

    @property
    def stem(self) -> str:
        """The folder's name, or the zip's without `.zip`, as an absolute path names it (so `.`
        and `..` name the folder they stand for): the outputs' names."""
        name = Path(os.path.abspath(self.path)).name
        return name[: -len(ZIP_SUFFIX)] if name.lower().endswith(ZIP_SUFFIX) else name

    @property
    def title(self) -> str:
        """The folder's name and the series' description."""
        return f"{self.stem}: {self.description}"

    def _voxels(self) -> np.ndarray:
        """The voxels in HU, float32 `[column, row, slice]`, through each file's rescale."""
        first = self.headers[0]
        shape = (int(first.Columns), int(first.Rows))
        hu = np.empty((*shape, len(self._files)), dtype=np.float32)
        with _opened(self.path) as files:
            for k, f in enumerate(self._files):
                try:
                    with files.open(f) as fp:
                        dataset = _with_transfer_syntax(pydicom.dcmread(fp, force=True))
                    pixels = dataset.pixel_array
                except Exception as err:  # pydicom's decoders raise many types: one line for any
                    raise IchsegError(
                        f"scan {f.label}: cannot decode the pixel data ({first_line(err)})"
                    ) from None
                if pixels.shape != (shape[1], shape[0]):
                    raise IchsegError(
                        f"scan {f.label}: expected one {shape[1]}×{shape[0]} grey image, found "
                        f"pixel data of shape {pixels.shape}"
                    )
                hu[:, :, k] = apply_modality_lut(pixels, dataset).T
                if self.tilt_shift_px is not None and k:
                    shift = (k * self.tilt_shift_px[0], k * self.tilt_shift_px[1])
                    hu[:, :, k] = ndimage.shift(hu[:, :, k], shift, order=1, cval=AIR_HU)
        return hu

    def _instances(self, slices: Sequence[int]) -> list[dict]:
        """The source images of these 1-based slice numbers: what a DICOM viewer shows."""
        return [
            {
                "slice": int(n),
                "instance_number": self.headers[n - 1].get("InstanceNumber"),
                "sop_instance_uid": str(self.headers[n - 1].get("SOPInstanceUID", "")),
            }
            for n in slices
        ]

    def input_identity(self) -> dict:
        """The resolved path and the SeriesInstanceUID (a folder exported again may hold another
        patient)."""
        return {**super().input_identity(), "series_instance_uid": self.uid}

    def describe(self, slices_with_hemorrhage: Sequence[int]) -> dict:
        """`dicom`: the series' identity, and every file of the input accounted for (`n_files`
        slices, plus the `left_out` counts, plus the `unreadable_files_left_out`, make
        `files_in_input`); where the slices counted are the source images, the images of the
        slices with hemorrhage (what a DICOM viewer numbers them)."""
        series = self._series()
        if self.orientation.axial_axis == 2:
            series["instances_with_hemorrhage"] = self._instances(slices_with_hemorrhage)
        return {"dicom": series}

    def _series(self) -> dict:
        """The series' identity and its files' accounting, as `describe` gives them."""
        first = self.headers[0]
        return {
            "study_instance_uid": str(first.get("StudyInstanceUID", "")),
            "series_instance_uid": self.uid,
            "series_description": self.description,
            "n_files": len(self.headers),
            "files_in_input": self.files_in_input,
            "left_out": {key: self.left_out.get(key, 0) for key in LEFT_OUT},
            "unreadable_files_left_out": [{"file": f, "why": why} for f, why in self.unreadable],
            "excluded_localizer_or_non_axial": sum(
                self.left_out.get(key, 0) for key in ("localizer", "non_axial")
            ),
            "rescale_type_as_written": self.rescale_type,
            "rescale_taken_as_hu": self.rescale_type == UNSPECIFIED_RESCALE,
            "slice_step_mm": round(self.slice_step_mm, 6),
            "gantry_tilt_deg": round(self.gantry_tilt_deg, 3),
            "resampled_for_tilt": self.tilt_shift_px is not None,
        }

    def seg_plan(self, asked: bool) -> SegPlan:
        """Whether a valid SEG can be made of the series' headers (`dicom_seg.seg_plan`)."""
        return dicom_seg.seg_plan(self) if asked else SegPlan(SEG_NOT_ASKED)

    def seg_bytes(self, mask: np.ndarray, parameters: dict[str, str], plan: SegPlan) -> bytes:
        """The SEG of `mask` on the series' planes (`dicom_seg.seg_bytes`)."""
        return dicom_seg.seg_bytes(self, mask, parameters, plan)


def _with_transfer_syntax(dataset: Dataset) -> Dataset:
    """`dataset` with a TransferSyntaxUID in its file meta: a file written without one (no
    preamble, no meta) gets the encoding pydicom read it in."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        dataset.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = dataset.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit is not False
            else ExplicitVRLittleEndian
            if little is not False
            else ExplicitVRBigEndian
        )
    return dataset


def _starts_like_dataset(head: bytes) -> bool:
    """True when `head` (a file's first bytes) starts with a little-endian data element of group
    0002 or 0008: a DICOM data set written without the preamble and `DICM` prefix."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in FIRST_GROUPS or element > 0xFF:
        return False
    explicit = head[4:6].isalpha() and head[4:6].decode("ascii") in VR.__members__
    return explicit or struct.unpack("<I", head[4:8])[0] < 1024  # implicit VR: a short value


def _dicom_named_without_data(f: _File, head: bytes) -> str | None:
    """Why a file without DICOM data still looks like a DICOM file (named as one, or a preamble
    cut short); None for a file that is not DICOM."""
    name = PurePosixPath(f.key).name
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return f"named {suffix} but holds no DICOM data (no DICM prefix at byte {PREAMBLE})"
    # Shorter than preamble and prefix: zeros (the usual preamble), then the start of `DICM`.
    cut_short = len(head) < PREAMBLE + len(PREFIX) and not any(head[:PREAMBLE])
    if cut_short and PREFIX.startswith(head[PREAMBLE:]) and (not suffix or suffix[1:].isdigit()):
        return f"{f.size} bytes: a DICOM file cut short in its preamble?"
    return None


def _cut_in_meta(header: Dataset, start: int, size: int) -> bool:
    """True when the file ends before the end of its file meta (starting at byte `start`) that
    the meta's group length gives."""
    length = getattr(header, "file_meta", Dataset()).get("FileMetaInformationGroupLength")
    # The group length element itself: tag, VR, length (12 bytes), then the rest of the meta.
    return isinstance(length, int) and start + 12 + length > size


def _sop_class(header: Dataset) -> str:
    """The file's SOP Class UID, from its file meta (complete, `_cut_in_meta`) or else its data
    set; '' when neither has one."""
    meta = getattr(header, "file_meta", None) or Dataset()
    return str(meta.get("MediaStorageSOPClassUID") or header.get("SOPClassUID") or "")


def _frames(header: Dataset) -> int:
    """NumberOfFrames (1 when absent); ValueError or TypeError when it is not a number."""
    return int(header.get("NumberOfFrames", 1) or 1)


def _pixel_bytes(header: Dataset) -> int:
    """How many bytes of uncompressed pixel data the image's header says it has."""
    samples = int(header.SamplesPerPixel)
    bits = int(header.Rows) * int(header.Columns) * samples * _frames(header)
    return (bits * int(header.BitsAllocated) + 7) // 8


def _short_pixel_data(fp: BinaryIO, header: Dataset, size: int) -> str | None:
    """Why the image cannot hold its pixels, read at `fp` where pydicom stopped before the pixel
    data element: no such element, or fewer bytes than `_pixel_bytes` in the element or the
    file. None when they are there, or when their size is known only by decoding them."""
    syntax = UID(str(header.file_meta.TransferSyntaxUID))
    if syntax.is_deflated:
        return None  # the whole data set is deflated: checked when decoded
    start = fp.tell()
    element = fp.read(12)
    if len(element) < 8:
        return "no pixel data after its header (cut short?)"
    implicit, little = header.original_encoding
    order = ">" if little is False else "<"
    if struct.unpack(f"{order}HH", element[:4]) != PIXEL_DATA_TAG:
        return None  # float pixel data: its size is checked when decoded
    if implicit is not False:
        length, offset = struct.unpack(f"{order}I", element[4:8])[0], 8
    elif element[4:6].decode("ascii", "replace") in EXPLICIT_VR_LENGTH_32:
        if len(element) < 12:
            return "cut short in its pixel data element"
        length, offset = struct.unpack(f"{order}I", element[8:12])[0], 12
    else:
        length, offset = struct.unpack(f"{order}H", element[6:8])[0], 8
    if length == UNDEFINED_LENGTH:
        return None  # compressed (encapsulated): its size is known when decoded
    expected = _pixel_bytes(header)
    held = min(length, size - start - offset)
    if held < expected:
        return (
            f"{held} bytes of pixel data where Rows × Columns × samples × frames × "
            f"BitsAllocated / 8 = {expected} (cut short?)"
        )
    return None


def _read_header(files: _Files, f: _File) -> tuple[Dataset | None, str | None]:
    """The file's header (no pixel data) and None; or None and why, for a file that looks like
    DICOM but cannot be read; or None, None for a file that is not DICOM. An image's header is
    read only when it is complete and its pixel data all there (`_short_pixel_data`)."""
    with files.open(f) as fp:
        head = fp.read(PREAMBLE + len(PREFIX))
        prefixed = head[PREAMBLE:] == PREFIX
        if not prefixed and not _starts_like_dataset(head):
            return None, _dicom_named_without_data(f, head)
        fp.seek(0)
        try:
            header = pydicom.dcmread(fp, stop_before_pixels=True, force=not prefixed)
            meta = getattr(header, "file_meta", None) or Dataset()
            for _ in (*meta.iterall(), *header.iterall()):  # every value decoded while a
                pass  # failure can still name its file
        except Exception as err:  # damaged data raises anything from struct to Unicode errors
            return None, f"header unreadable ({first_line(err)})"
        # The header outlives the stream (a zip member's holds a lock): copies must not hold it.
        header.buffer = None
        if _cut_in_meta(header, PREAMBLE + len(PREFIX) if prefixed else 0, f.size):
            return None, "cut short in its file meta"
        sop = _sop_class(header)
        if not sop:
            return None, "no SOP Class UID in its header (cut short or damaged?)"
        if "Rows" not in header and "Image Storage" not in UID(sop).name:
            return header, None  # a DICOMDIR, a report, a presentation state: not an image
        missing = [k for k in IMAGE_PIXEL_KEYWORDS if k not in header]
        if missing:
            return None, f"an image without {', '.join(missing)} (cut short or damaged?)"
        try:
            _frames(header)  # a number, or the file is unreadable
            why = _short_pixel_data(fp, _with_transfer_syntax(header), f.size)
        except (ValueError, TypeError, struct.error) as err:
            return None, f"image attributes unreadable ({first_line(err)})"
    return (None, why) if why else (header, None)


def _is_image(header: Dataset) -> bool:
    """True for a header `_read_header` read as an image."""
    return "Rows" in header


def _orientation(header: Dataset) -> np.ndarray | None:
    """ImageOrientationPatient as 6 finite numbers, or None when absent or malformed."""
    try:
        return _vector(header, "ImageOrientationPatient", 6, "")
    except IchsegError:
        return None


def _multi_frame(header: Dataset) -> bool:
    """True for CT written as one multi-frame object (enhanced CT, or several frames)."""
    return _sop_class(header) in ENHANCED_CT or _frames(header) > 1


def _has_geometry(header: Dataset) -> bool:
    """True for an image with a place in the patient: ImageOrientationPatient, or multi-frame
    (whose orientation is in its functional groups)."""
    return _orientation(header) is not None or _multi_frame(header)


def _left_out_reason(header: Dataset) -> str | None:
    """Why an image is left out of series choice (a `LEFT_OUT` key): a localizer, or an image
    whose slice normal is not axial; None to keep it (no orientation: decided for its series)."""
    image_type = [str(v).upper() for v in header.get("ImageType", [])]
    if "LOCALIZER" in image_type:
        return "localizer"
    orientation = _orientation(header)
    if orientation is None or _multi_frame(header):
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    if length == 0:
        return None  # refused with its series, naming the tag
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])) / length)))
    return "non_axial" if angle > MAX_AXIAL_DEG else None


def _series_line(uid: str, group: list[tuple[_File, Dataset]]) -> str:
    """`UID 'description' (N slices)` of a series, for a refusal listing the choices."""
    description = str(group[0][1].get("SeriesDescription", "")).strip()
    modality = str(group[0][1].get("Modality", "?"))
    return f"{uid} {modality} {description!r} ({len(group)} images)"


def _counted(left_out: Counter, unreadable: int) -> str:
    """The files left out, as a message says them: `5000 not DICOM, 1 localizer(s)`."""
    parts = [f"{left_out[key]} {text}" for key, text in LEFT_OUT.items() if left_out[key]]
    return ", ".join(parts + ([f"{unreadable} unreadable"] if unreadable else []))


def _read_series(
    source: Path, series: Sequence[str], resample_tilt: bool, allow_unreadable: bool
) -> DicomScan:
    """Read the CT series of a DICOM folder or zip into a `DicomScan`: the one of `series` it holds,
    else its only CT series. Resampled onto an orthogonal grid if tilted and `resample_tilt`;
    files that look like DICOM but cannot be read left out only with `allow_unreadable`;
    IchsegError naming the file or tag for anything unsafe."""
    if source.is_file() and not source.name.lower().endswith(ZIP_SUFFIX):
        what = "a DICOMDIR" if source.name.upper() == DICOMDIR else "a single DICOM file"
        raise IchsegError(
            f"scan {source}: {what}; ichseg reads a whole series: give the folder that holds "
            f"it: {source.resolve().parent}"
        )
    groups: dict[str, list[tuple[_File, Dataset]]] = {}
    left_out: Counter = Counter()
    unreadable: list[tuple[str, str]] = []
    with _opened(source) as files:
        listing = files.listing()
        for f in listing:
            header, why = _read_header(files, f)
            if why is not None:
                unreadable.append((f.label, why))
            elif header is None:
                left_out["not_dicom"] += 1
            elif not _is_image(header):
                left_out["non_image_objects"] += 1
            elif reason := _left_out_reason(header):
                left_out[reason] += 1
            else:
                groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((f, header))
    if unreadable and not allow_unreadable:
        shown = "; ".join(f"{label} ({why})" for label, why in unreadable[:SHOWN_UNREADABLE])
        more = len(unreadable) - SHOWN_UNREADABLE
        raise IchsegError(
            f"scan {source}: {len(unreadable)} of {len(listing)} file(s) look like DICOM but "
            f"cannot be read: {shown}{f'; and {more} more' if more > 0 else ''}; the series "
            "would be read without them: repair or export it again, or pass --allow-unreadable "
            "to leave them out (the JSON lists them)"
        )
    for uid in [u for u, g in groups.items() if not any(_has_geometry(h) for _, h in g)]:
        left_out["without_orientation"] += len(groups.pop(uid))
    if not groups:
        axial = "axial " if left_out.keys() - {"not_dicom", "non_image_objects"} else ""
        counted = _counted(left_out, len(unreadable))
        raise IchsegError(
            f"scan {source}: expected a DICOM series, found no {axial}DICOM image among "
            f"{len(listing)} file(s){f' ({counted})' if counted else ''}"
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
    group = groups.pop(uid)
    for f, header in group:
        if str(header.get("Modality", "")) != "CT":
            raise IchsegError(
                f"scan {f.label}: expected Modality CT, found {header.get('Modality', 'none')}"
            )
    left_out["other_series"] = sum(len(g) for g in groups.values())
    accounting = {
        "files_in_input": len(listing),
        "left_out": {key: left_out[key] for key in LEFT_OUT},
        "unreadable": unreadable,
    }
    return _scan(source, uid, group, resample_tilt, accounting)


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
    resample_tilt: bool,
    accounting: dict,
) -> DicomScan:
    """Check the series' geometry, sort its slices and build the `DicomScan` (with the
    `accounting` of the input's other files)."""
    for f, header in group:
        if _multi_frame(header):
            sop = _sop_class(header)
            kind = UID(sop).name if sop in ENHANCED_CT else "multi-frame image"
            raise IchsegError(
                f"scan {f.label}: a multi-frame image ({kind}, {_frames(header)} frame(s)); "
                "expected single-slice CT images (export the series as classic single-frame CT)"
            )
    if len(group) < 2:
        raise IchsegError(
            f"scan {group[0][0].label}: series {uid} has a single slice; expected at least 2 "
            "(the slice spacing comes from their positions)"
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
    rescale_type = _same(group, "RescaleType", lambda f, h: _rescale_type(h))
    shape = (cols, rows, len(group))
    # A header-only image: the mask is written with its geometry, the voxels come from `read_hu`.
    image = nib.Nifti1Image(np.broadcast_to(np.int16(0), shape), affine)
    image.header.set_xyzt_units("mm")
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    return DicomScan(
        path=source,
        image=image,
        shape=shape,
        zooms=zooms,  # type: ignore[arg-type]
        orientation=turn,
        uid=uid,
        description=str(group[0][1].get("SeriesDescription", "")).strip(),
        headers=[h for _, h in group],
        slice_step_mm=mean_step,
        lps_affine=lps,
        gantry_tilt_deg=tilt,
        tilt_shift_px=shift,
        rescale_type=rescale_type,
        _files=[f for f, _ in group],
        **accounting,
    )


def _rescale_type(header: Dataset) -> str | None:
    """The file's RescaleType as written (upper case), None when absent or empty."""
    return str(header.get("RescaleType", "")).strip().upper() or None


def _check_rescale(label: str, header: Dataset) -> None:
    """Raise unless the file's stored values convert to HU: a RescaleType of HU, absent (HU by
    the standard for CT) or US (what GDCM and ITK write for CT, taken as HU)."""
    rescale = _rescale_type(header)
    if rescale not in (None, "HU", UNSPECIFIED_RESCALE):
        raise IchsegError(
            f"scan {label}: expected RescaleType HU (or {UNSPECIFIED_RESCALE}, taken as HU for "
            f"CT), found {rescale}"
        )
    if "RescaleIntercept" not in header or "RescaleSlope" not in header:
        raise IchsegError(
            f"scan {label}: no RescaleSlope (0028,1053) / RescaleIntercept (0028,1052); "
            "cannot convert the stored values to HU"
        )
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        value = header.get(keyword)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise IchsegError(f"scan {label}: expected {keyword} to be a number, found {value!r}")


def _check_decodable(label: str, header: Dataset) -> None:
    """Raise when the file's transfer syntax is compressed and no installed handler decodes it."""
    syntax = UID(str(_with_transfer_syntax(header).file_meta.TransferSyntaxUID))
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
