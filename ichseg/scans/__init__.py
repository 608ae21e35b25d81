"""Scans: a CT volume in Hounsfield units with its geometry, read from NIfTI or a DICOM series
and checked once; the writers of what is predicted on one (NIfTI mask, DICOM SEG).

`open_scan` picks the reader of a path (`ichseg.scans.opener.READERS`); each reader gives a
`ichseg.scans.scan.Scan`, whose methods answer everything that differs by format."""

from ichseg.scans.opener import open_scan
from ichseg.scans.scan import Scan

__all__ = ["Scan", "open_scan"]
