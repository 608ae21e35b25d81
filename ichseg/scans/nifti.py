"""NIfTI files: the one reader of a NIfTI volume (scans to predict on, and every training
source's scans and masks), a NIfTI scan, and the NIfTI mask of a prediction.

`read_nifti` opens a file and checks its header: one 3-D volume (a trailing singleton axis is
allowed), not empty, of real numbers, with positive voxel sizes that agree with its affine;
`nifti_voxels` reads the voxels through nibabel's scaling; `load_nifti` does both. Each names its
file in one line when it cannot. A `NiftiScan` is a file opened so; its voxels are read as
Hounsfield units and checked by `ichseg.scans.scan.Scan`. A mask is written as uint8 0/1 with
the scan's exact shape and header geometry (`mask_image`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ichseg.errors import IchsegError, first_line, require_file
from ichseg.scans.hounsfield import check_stored_type
from ichseg.scans.orientation import reorientation
from ichseg.scans.scan import ReadOptions, Scan

# Longest first, so that a name's suffix is found by the first that matches.
NIFTI_SUFFIXES = (".nii.gz", ".nii")

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


def read_nifti(path: Path, label: str) -> tuple[nib.Nifti1Image, tuple[float, float, float]]:
    """Open the NIfTI file `path` and check its header: one non-empty 3-D volume (a trailing
    singleton axis allowed) of a real stored type, with usable voxel sizes (`voxel_sizes`).
    Returns the image (its voxels unread: `nifti_voxels`) and the voxel sizes; an IchsegError
    naming `label` for anything else."""
    try:
        with open(path, "rb"):
            pass  # nibabel's file-type sniffing would hide why a file cannot be opened
    except OSError as err:
        raise IchsegError(f"{label}: cannot read the file ({err.strerror})") from None
    try:
        image = nib.load(path)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise IchsegError(f"{label}: expected a NIfTI image, found {type(image).__name__}")
        shape = tuple(int(n) for n in image.shape)
        # A trailing singleton axis (H, W, N, 1) is still one volume; real 4-D data is not.
        if len(shape) < 3 or any(n != 1 for n in shape[3:]):
            raise IchsegError(f"{label}: expected a 3-D volume (H, W, slices), found shape {shape}")
        if min(shape[:3]) < 1:
            raise IchsegError(f"{label}: expected a non-empty volume, found shape {shape}")
        check_stored_type(image.get_data_dtype(), label)
        zooms = voxel_sizes(image, path, label)
    except IchsegError:
        raise
    except NIFTI_READ_ERRORS as err:
        raise IchsegError(f"{label}: cannot read as NIfTI ({first_line(err)})") from None
    return image, zooms


def nifti_voxels(image: nib.Nifti1Image, label: str) -> np.ndarray:
    """The voxels of an image `read_nifti` opened, float32 (H, W, N) through nibabel's scaling;
    an IchsegError naming `label` when they cannot be read."""
    try:
        data = image.get_fdata(dtype=np.float32, caching="unchanged")
    except NIFTI_READ_ERRORS as err:
        raise IchsegError(f"{label}: cannot read as NIfTI ({first_line(err)})") from None
    return data.reshape(image.shape[:3])


def load_nifti(path: Path, label: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A NIfTI volume read and checked (`read_nifti`, `nifti_voxels`): float32 (H, W, N) data,
    affine and voxel sizes."""
    image, zooms = read_nifti(path, label)
    return nifti_voxels(image, label), image.affine, zooms


@dataclass
class NiftiScan(Scan):
    """A scan read from a `.nii` / `.nii.gz` file; `image` is the file."""

    @staticmethod
    def reads(path: Path) -> bool:
        """True for a path named as NIfTI (`.nii`, `.nii.gz`, in any case)."""
        return nifti_stem(path.name) is not None

    @classmethod
    def open(cls, path: Path, options: ReadOptions) -> NiftiScan:
        """Open a NIfTI scan and check its header (`read_nifti`); NIfTI has no read options."""
        require_file(path, "scan", "a NIfTI file")
        label = f"scan {path}"
        image, zooms = read_nifti(path, label)
        shape = tuple(int(n) for n in image.shape)
        return cls(path, image, shape, zooms, reorientation(image.affine, label))

    @property
    def stem(self) -> str:
        """The file name without `.nii` / `.nii.gz`."""
        return nifti_stem(self.path.name)

    def _voxels(self) -> np.ndarray:
        return nifti_voxels(self.image, f"scan {self.path}")


def mask_image(scan: Scan, mask: np.ndarray) -> nib.Nifti1Image:
    """The mask as uint8 0/1 with the scan's shape and header geometry (affine, q/sform, zooms)."""
    header = scan.image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 1
    data = mask.astype(np.uint8).reshape(scan.shape)
    # affine=None keeps the header's qform and sform (codes included) exactly as the scan's.
    return type(scan.image)(data, None, header)
