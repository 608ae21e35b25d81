"""Scans: a CT volume in Hounsfield units with its geometry, read from NIfTI or a DICOM series
and checked once; the writers of what is predicted on one (NIfTI mask, DICOM SEG).

`open_scan` picks the reader of a path (`ichseg.scans.opener.READERS`); each reader gives a
`ichseg.scans.scan.Scan`, whose methods answer everything that differs by format."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ichseg.scans.scan import Scan

if TYPE_CHECKING:
    from ichseg.scans.opener import open_scan

__all__ = ["Scan", "open_scan"]


def __getattr__(name: str) -> Any:
    """`open_scan`, imported when first asked for: its DICOM reader loads pydicom and highdicom,
    which the training data's use of this package (NIfTI, orientation, HU checks) does without."""
    if name == "open_scan":
        from ichseg.scans.opener import open_scan

        return open_scan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
