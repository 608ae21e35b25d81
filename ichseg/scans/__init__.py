"""Scans: a CT volume in Hounsfield units with its geometry, read from NIfTI or a DICOM series
and checked once; the writers of what is predicted on one (NIfTI mask, DICOM SEG)."""
