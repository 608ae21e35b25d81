"""The DICOM SEG object of a prediction on a DICOM series, built with highdicom.

One binary segment, "Intracranial hemorrhage", with one frame per source slice (empty frames
kept, so every slice says whether it bleeds) on the source images' own planes; it references the
source series and each source instance. A series resampled for gantry tilt has its frames on
the resampled grid's planes instead (their positions, orientation and spacing are in the SEG),
so that the SEG holds exactly the NIfTI mask. The segment is coded with SNOMED CT:
- property category 49755003 "Morphologically Altered Structure" (DICOM PS3.16 CID 7150), the
  category highdicom's documentation gives for regions of abnormality;
- property type 1386000 "Intracranial hemorrhage (disorder)" (SNOMED CT concept 1386000, in
  DICOM's concept dictionary as pydicom ships it: `pydicom.sr.codedict.codes.SCT.
  IntracranialHemorrhage`; https://browser.ihtsdotools.org/?perspective=full&conceptId1=1386000).
The algorithm is identified as ichseg with its version, family "Artificial Intelligence" (DCM
123110, CID 7162), and as parameters the checkpoints' ids (file name and the first 16 hex digits
of the file's SHA-256), the threshold, the CT window and whether flip averaging was used.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ichseg import __version__
from ichseg.errors import IchsegError, first_line
from ichseg.inference.nifti_io import Scan

SEG_SUFFIX = "_seg.dcm"
CATEGORY = Code("49755003", "SCT", "Morphologically Altered Structure")
INTRACRANIAL_HEMORRHAGE = Code("1386000", "SCT", "Intracranial hemorrhage")
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
# The SEG's own series number: arbitrary, high so viewers list it after the scanner's series.
SEG_SERIES_NUMBER = 901
RESEARCH_NOTE = "research tool, not a medical device"


def checkpoint_ids(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Each checkpoint as `name sha256:<first 16 hex digits of the file's SHA-256>`."""
    ids = []
    for path in map(Path, paths):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
        ids.append(f"{path.name} sha256:{digest.hexdigest()[:16]}")
    return ids


def seg_path(outdir: Path, scan: Scan) -> Path:
    """Where the SEG of `scan` goes."""
    return outdir / f"{scan.stem}{SEG_SUFFIX}"


def _resampled_geometry(scan: Scan) -> dict:
    """highdicom's plane positions, orientation and pixel measures of a resampled grid."""
    series = scan.dicom
    lps = series.lps_affine
    first = series.headers[0]
    patient = hd.CoordinateSystemNames.PATIENT
    return {
        "plane_positions": [
            hd.PlanePositionSequence(patient, [float(v) for v in (lps @ [0, 0, k, 1])[:3]])
            for k in range(scan.shape[2])
        ],
        "plane_orientation": hd.PlaneOrientationSequence(
            patient, [float(v) for v in first.ImageOrientationPatient]
        ),
        "pixel_measures": hd.PixelMeasuresSequence(
            pixel_spacing=[float(v) for v in first.PixelSpacing],
            slice_thickness=float(first.get("SliceThickness") or series.slice_step_mm),
            spacing_between_slices=series.slice_step_mm,
        ),
    }


def seg_bytes(scan: Scan, mask: np.ndarray, parameters: dict[str, str]) -> bytes:
    """The SEG file of `mask` (boolean, in the scan's own `[column, row, slice]` grid) as bytes;
    `parameters` (the checkpoints' ids, threshold, ...) name how it was made."""
    if scan.dicom is None:
        raise IchsegError(f"scan {scan.path}: a DICOM SEG needs a DICOM series as its source")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="ichseg",
        family=ARTIFICIAL_INTELLIGENCE,
        version=__version__,
        source="ichseg",
        parameters=parameters,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Intracranial hemorrhage",
        segmented_property_category=CATEGORY,
        segmented_property_type=INTRACRANIAL_HEMORRHAGE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=generate_uid(),
        tracking_id="ichseg intracranial hemorrhage",
    )
    # One frame per source image, in the series' (sorted) order: [slice, row, column].
    frames = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8).transpose(2, 1, 0))
    try:
        geometry = _resampled_geometry(scan) if scan.dicom.tilt_shift_px is not None else {}
        seg = hd.seg.Segmentation(
            source_images=scan.dicom.headers,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=generate_uid(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="ichseg",
            manufacturer_model_name="ichseg predict",
            software_versions=__version__,
            device_serial_number="none",
            content_description=f"ICH by ichseg; {RESEARCH_NOTE}",
            content_label="ICH",
            series_description=f"ichseg ICH mask ({RESEARCH_NOTE})",
            omit_empty_frames=False,
            **geometry,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        raise IchsegError(
            f"scan {scan.path}: cannot build a DICOM SEG from its headers ({first_line(err)})"
        ) from None
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()
