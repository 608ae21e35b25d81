"""A CT scan as every reader gives it, whatever its format.

A `Scan` holds one 3-D volume whose header was checked when it was opened (`ichseg.scans.nifti`
for a NIfTI file, `ichseg.scans.dicom` for a DICOM series): its shape, voxel sizes, the
reorientation to the training orientation, and the header-only NIfTI image a predicted mask is
written with. Its voxels are read on demand (`read_hu`), checked once there to be finite and to
look like head CT in Hounsfield units (`ichseg.scans.hounsfield`). Everything that differs by
format is asked of the scan itself: the outputs' name (`stem`), what outputs record of their
input (`input_identity`), what a summary says of it (`describe`), a page's `title`, and whether
and how a DICOM SEG of a prediction is written (`seg_plan`, `seg_bytes`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ichseg.errors import IchsegError
from ichseg.scans.hounsfield import check_ct_size, check_finite, check_hounsfield
from ichseg.scans.orientation import Reorientation

# Why a scan that can carry a SEG has none when none was asked for (predict's --no-seg).
SEG_NOT_ASKED = "--no-seg"


@dataclass(frozen=True)
class ReadOptions:
    """How an input is read beyond its path: a DICOM series' (`ichseg.scans.dicom`) choice of
    series, gantry tilt resampled, unreadable files left out; a NIfTI file has none."""

    series: tuple[str, ...] = ()
    resample_tilt: bool = False
    allow_unreadable: bool = False


@dataclass(frozen=True)
class SegPlan:
    """Whether a scan's DICOM SEG is written: `why_not` says why none is (None: one is;
    `SEG_NOT_ASKED` when none was asked for); `filled` is each value written into copies of its
    headers (keyword -> value)."""

    why_not: str | None = None
    filled: dict[str, str | float] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        """A SEG was asked for and cannot be made."""
        return self.why_not not in (None, SEG_NOT_ASKED)


@dataclass
class Scan(ABC):
    """A CT scan, checked to hold one 3-D volume; its voxels are read on demand. `orientation`
    brings its array to the training orientation and a predicted mask back (its affine's);
    `image` is the NIfTI image (for a DICOM series a header-only one) whose shape and geometry
    a mask is written with."""

    path: Path
    image: nib.Nifti1Image
    shape: tuple[int, ...]
    zooms: tuple[float, float, float]
    orientation: Reorientation

    def __post_init__(self) -> None:
        """Refuse a volume too small in-plane to be a scan, in the training orientation (every
        reader of scans builds one of these, so each gets the check)."""
        axial_last = tuple(int(n) for n in self.orientation.zooms(self.shape[:3]))
        check_ct_size(axial_last, f"scan {self.path}")

    @staticmethod
    @abstractmethod
    def reads(path: Path) -> bool:
        """Whether `path` is an input of this reader's format."""

    @classmethod
    @abstractmethod
    def open(cls, path: Path, options: ReadOptions) -> Scan:
        """Open the scan at `path` and check its header; IchsegError naming what is wrong."""

    @property
    @abstractmethod
    def stem(self) -> str:
        """The name the outputs of this scan are named after."""

    @property
    def title(self) -> str:
        """What a page of this scan's prediction is headed with."""
        return self.stem

    @abstractmethod
    def _voxels(self) -> np.ndarray:
        """The voxels as stored, converted to HU (float32), before any check."""

    def read_hu(self, allow_non_hu: bool = False) -> np.ndarray:
        """Hounsfield units (H, W, N) float32; all finite, and looking like head CT in HU unless
        `allow_non_hu`."""
        hu = self._voxels().reshape(self.shape[:3])
        check_finite(hu, f"scan {self.path}")
        check_hounsfield(hu, f"scan {self.path}", allow_non_hu)
        return hu

    def input_identity(self) -> dict:
        """What outputs record of the input they were made from: its resolved path."""
        return {"path": str(self.path.resolve())}

    def describe(self, slices_with_hemorrhage: Sequence[int]) -> dict:
        """What a prediction's summary says of the input beyond its path and shape (keys of the
        summary), given the 1-based slice numbers with hemorrhage."""
        return {}

    def seg_plan(self, asked: bool) -> SegPlan | None:
        """Whether and how a DICOM SEG of a prediction is written (`asked`: one was asked for);
        None for a scan that carries no SEG."""
        return None

    def seg_bytes(self, mask: np.ndarray, parameters: dict[str, str], plan: SegPlan) -> bytes:
        """The DICOM SEG file of `mask` (boolean, in the scan's own grid) as bytes."""
        raise IchsegError(f"scan {self.path}: no DICOM SEG can be made, it is not a DICOM series")
