"""NIfTI files of `ichseg predict`: a scan read and checked, its mask and summary written.

A scan must hold one 3-D volume (a trailing singleton axis is allowed) of real numbers, at least
`MIN_IN_PLANE` pixels in-plane, with positive voxel sizes; its voxels are read as Hounsfield
units through nibabel's scaling and must look like head CT (`ichseg.scans.hounsfield`). The mask
is written as uint8 0/1 with the scan's exact shape and header geometry, next to a JSON summary;
both are written atomically. The summary records its input (`input_identity`: the resolved path,
and a DICOM series' UID), and a file of the same name is replaced only when it is an earlier
prediction of that same input: inputs of one name in different folders (PACS exports name every
folder `DICOM`) never replace each other's outputs.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from ichseg.atomic import atomic_path
from ichseg.errors import IchsegError, first_line, require_file
from ichseg.scans.hounsfield import check_ct_size, check_hounsfield, check_stored_type
from ichseg.scans.orientation import Reorientation, reorientation

if TYPE_CHECKING:
    from ichseg.scans.dicom import DicomSeries

# Longest first, so that a name's suffix is found by the first that matches.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
MASK_SUFFIX = "_mask.nii.gz"

# What nibabel, gzip and numpy raise on a damaged or foreign NIfTI file.
NIFTI_READ_ERRORS = (
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
    OSError,
    EOFError,
    ValueError,
    zlib.error,
)

# How far the header's voxel sizes may differ from the affine's before the geometry is unusable.
_ZOOM_RTOL = 1e-2


def voxel_sizes(image: nib.Nifti1Image, path: Path, label: str) -> tuple[float, float, float]:
    """The voxel sizes (mm) a volume in mL may be computed from, or an IchsegError naming `label`.

    They are the header's own pixdim (read unfixed: nibabel silently turns 0 into 1), which must
    be positive and finite and agree with the lengths of the affine's axes.
    """
    with nib.openers.ImageOpener(path) as fh:
        raw = type(image.header).from_fileobj(fh, check=False)
    zooms = tuple(float(z) for z in raw["pixdim"][1:4])
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise IchsegError(
            f"{label}: voxel sizes {zooms} in the header are not positive finite mm; "
            "a volume in mL cannot be computed from them"
        )
    axes = tuple(float(n) for n in np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0))
    if not np.allclose(axes, zooms, rtol=_ZOOM_RTOL):
        rounded = tuple(round(a, 4) for a in axes)
        raise IchsegError(
            f"{label}: voxel sizes {zooms} in the header disagree with the affine's {rounded} mm; "
            "a volume in mL cannot be computed from them"
        )
    return zooms  # type: ignore[return-value]


def nifti_stem(name: str) -> str | None:
    """`name` without `.nii` / `.nii.gz` (in any case); None when it is not a NIfTI file name."""
    ending = next((s for s in NIFTI_SUFFIXES if name.lower().endswith(s)), None)
    return name[: -len(ending)] if ending else None


@dataclass
class Scan:
    """A CT scan, checked to hold one 3-D volume; `hu` is read on demand. `orientation`
    brings its array to the training orientation and a predicted mask back (its affine's).
    A NIfTI file's `image` is the file; a DICOM series' (`dicom`, `ichseg.scans.dicom`)
    is a header-only image of its shape and affine, and its voxels are read from the series."""

    path: Path
    image: nib.Nifti1Image
    shape: tuple[int, ...]
    zooms: tuple[float, float, float]
    orientation: Reorientation
    dicom: DicomSeries | None = None

    def __post_init__(self) -> None:
        """Refuse a volume too small in-plane to be a scan, in the training orientation (every
        reader of scans builds one of these, so each gets the check)."""
        axial_last = tuple(int(n) for n in self.orientation.zooms(self.shape[:3]))
        check_ct_size(axial_last, f"scan {self.path}")

    @property
    def stem(self) -> str:
        """The file name without `.nii` / `.nii.gz` (a DICOM series': its folder's or zip's)."""
        if self.dicom is not None:
            return self.dicom.stem
        return nifti_stem(self.path.name)

    def read_hu(self, allow_non_hu: bool = False) -> np.ndarray:
        """Hounsfield units (H, W, N) float32 through nibabel's scaling (a DICOM series': its
        rescale); all finite, and looking like head CT in HU unless `allow_non_hu`."""
        if self.dicom is not None:
            data = self.dicom.read_hu()
        else:
            try:
                data = self.image.get_fdata(dtype=np.float32, caching="unchanged")
            except NIFTI_READ_ERRORS as err:
                raise IchsegError(
                    f"scan {self.path}: cannot read voxels ({first_line(err)})"
                ) from None
        hu = data.reshape(self.shape[:3])
        bad = hu.size - int(np.count_nonzero(np.isfinite(hu)))
        if bad:
            raise IchsegError(f"scan {self.path}: {bad} voxels are NaN or infinite")
        check_hounsfield(hu, f"scan {self.path}", allow_non_hu)
        return hu


def open_scan(path: str | os.PathLike) -> Scan:
    """Open a `.nii` / `.nii.gz` scan and check its header: one 3-D volume, positive voxel sizes."""
    path = Path(path)
    require_file(path, "scan", "a NIfTI file")
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise IchsegError(
            f"scan {path}: expected a NIfTI file ending in .nii or .nii.gz, a DICOM folder or "
            "a .zip of one"
        )
    try:
        image = nib.load(path)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise IchsegError(f"scan {path}: expected a NIfTI image, found {type(image).__name__}")
        shape = tuple(int(n) for n in image.shape)
    except IchsegError:
        raise
    except NIFTI_READ_ERRORS as err:
        raise IchsegError(f"scan {path}: cannot read as NIfTI ({first_line(err)})") from None
    # A trailing singleton axis (H, W, N, 1) is still one volume; real 4-D data is not.
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise IchsegError(f"scan {path}: expected a 3-D volume (H, W, slices), found shape {shape}")
    if min(shape[:3]) < 1:
        raise IchsegError(f"scan {path}: expected a non-empty volume, found shape {shape}")
    check_stored_type(image.get_data_dtype(), f"scan {path}")
    try:
        zooms = voxel_sizes(image, path, f"scan {path}")
    except NIFTI_READ_ERRORS as err:
        raise IchsegError(f"scan {path}: cannot read as NIfTI ({first_line(err)})") from None
    orientation = reorientation(image.affine, f"scan {path}")
    return Scan(path, image, shape, zooms, orientation)  # type: ignore[arg-type]


def mask_image(scan: Scan, mask: np.ndarray) -> nib.Nifti1Image:
    """The mask as uint8 0/1 with the scan's shape and header geometry (affine, q/sform, zooms)."""
    header = scan.image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 1
    data = mask.astype(np.uint8).reshape(scan.shape)
    # affine=None keeps the header's qform and sform (codes included) exactly as the scan's.
    return type(scan.image)(data, None, header)


def output_paths(outdir: Path, scan: Scan) -> tuple[Path, Path]:
    """Where the mask and the JSON summary of `scan` go."""
    return outdir / f"{scan.stem}{MASK_SUFFIX}", outdir / f"{scan.stem}.json"


def input_identity(scan: Scan) -> dict:
    """What outputs record of the input they were made from: its resolved path, and for a DICOM
    series its SeriesInstanceUID (a folder exported again may hold another patient)."""
    identity = {"path": str(scan.path.resolve())}
    if scan.dicom is not None:
        identity["series_instance_uid"] = scan.dicom.uid
    return identity


def _recorded_input(summary: dict) -> dict:
    """The input an earlier summary was made from; one written before summaries recorded it
    gives its `scan` path (as it was typed, resolved from here) and its series UID."""
    recorded = summary.get("input")
    if isinstance(recorded, dict):
        return recorded
    legacy = {"path": str(Path(str(summary.get("scan", ""))).resolve())}
    dicom = summary.get("dicom")
    if isinstance(dicom, dict) and "series_instance_uid" in dicom:
        legacy["series_instance_uid"] = str(dicom["series_instance_uid"])
    return legacy


def _describe_input(identity: dict) -> str:
    """An input in a message: its path, and its series UID when it is a DICOM series."""
    uid = identity.get("series_instance_uid")
    return f"{identity.get('path')}" + (
        f" (series {uid or 'without a UID'})" if uid is not None else ""
    )


def _earlier_prediction(json_path: Path, mask_path: Path) -> dict | None:
    """The summary at `json_path` when it is one `ichseg predict` wrote next to `mask_path`."""
    try:
        summary = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(summary, dict) and Path(str(summary.get("mask", ""))).name == mask_path.name:
        return summary
    return None


def check_outputs_free(
    outdir: Path, scans: Sequence[Scan], extra: Callable[[Scan], Sequence[Path]] = lambda _: ()
) -> list[dict | None]:
    """Raise unless every output path (the mask, the JSON and the `extra` outputs of each scan)
    is free or holds an earlier prediction of the same input: a file the user put there (a mask
    of their own, say), or the outputs of another input of the same name, are never replaced.
    Returns each scan's earlier summary (None where there is none)."""
    earlier: list[dict | None] = []
    for scan in scans:
        mask_path, json_path = output_paths(outdir, scan)
        outputs = (mask_path, json_path, *extra(scan))
        taken = [p for p in outputs if p.exists() or p.is_symlink()]
        summary = _earlier_prediction(json_path, mask_path) if taken else None
        if taken and summary is None:
            raise IchsegError(
                f"{taken[0]}: exists and is not an earlier ichseg predict output (no "
                f"{json_path.name} naming {mask_path.name}); choose another -o or remove it"
            )
        if summary is not None and _recorded_input(summary) != input_identity(scan):
            raise IchsegError(
                f"{json_path}: holds the prediction of {_describe_input(_recorded_input(summary))}"
                f", not of {_describe_input(input_identity(scan))}; outputs are named after the "
                f"scan's file or folder name ({scan.stem}), so give this scan another -o folder"
            )
        earlier.append(summary)
    return earlier


def write_outputs(
    scan: Scan,
    mask: np.ndarray,
    summary: dict,
    outdir: Path,
    extra: Mapping[Path, bytes] | None = None,
    stale: Sequence[Path] = (),
) -> tuple[Path, Path]:
    """Write `<stem>_mask.nii.gz`, the `extra` files, then `<stem>.json`, each atomically; then
    remove `stale`, the files an earlier prediction of this input wrote that this one does not
    (so that no earlier SEG or PNG reads as this prediction's)."""
    mask_path, json_path = output_paths(outdir, scan)
    # mtime=0: the same mask gives the same bytes.
    blob = gzip.compress(mask_image(scan, mask).to_bytes(), compresslevel=1, mtime=0)
    try:
        for path, data in {mask_path: blob, **(extra or {})}.items():
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        for path in stale:
            path.unlink(missing_ok=True)
    except OSError as err:
        raise IchsegError(f"output folder {outdir}: cannot write ({first_line(err)})") from None
    return mask_path, json_path
