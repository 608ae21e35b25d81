"""CT scans written as a scanner exports them."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

ZOOMS = (0.5, 0.4, 5.0)


def save_scan(path: Path, hu: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """HU stored as int16 through slope 2 / intercept -1024, like a scaled scanner export."""
    affine = np.diag([*ZOOMS, 1.0]) if affine is None else affine
    image = nib.Nifti1Image(np.rint((hu + 1024) / 2).astype(np.int16), affine)
    image.header.set_slope_inter(2.0, -1024.0)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path


def with_air(hu: np.ndarray, columns: int = 2) -> np.ndarray:
    """`hu` with its first `columns` columns set to air (-1000 HU), as around a real head: what
    the check that a scan is CT in Hounsfield units looks for."""
    out = np.array(hu, dtype=np.float64)
    out[:, :columns] = -1000.0
    return out
