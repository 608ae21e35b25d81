"""The one entry that opens a scan: the first reader of `READERS` that reads a path opens it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ichseg.errors import IchsegError, require_file
from ichseg.scans.dicom import DicomScan
from ichseg.scans.nifti import NiftiScan
from ichseg.scans.scan import ReadOptions, Scan

# Tried in this order: a folder named `x.nii` is a DICOM folder.
READERS: tuple[type[Scan], ...] = (DicomScan, NiftiScan)


def open_scan(
    path: str | os.PathLike,
    series: Sequence[str] = (),
    resample_tilt: bool = False,
    allow_unreadable: bool = False,
) -> Scan:
    """Open a scan (a `.nii` / `.nii.gz` file, or a DICOM folder or zip: the one of `series` it
    holds, else its only CT series; a tilted one resampled if `resample_tilt`; its unreadable
    files left out if `allow_unreadable`) and check its header."""
    path = Path(path)
    options = ReadOptions(tuple(series), resample_tilt, allow_unreadable)
    for reader in READERS:
        if reader.reads(path):
            return reader.open(path, options)
    require_file(path, "scan", "a NIfTI file")
    raise IchsegError(
        f"scan {path}: expected a NIfTI file ending in .nii or .nii.gz, a DICOM folder or "
        "a .zip of one"
    )
