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
of the file's SHA-256), the threshold, the CT window and whether flip averaging was used; the
content creator is "ichseg".

The patient, study and frame of reference come from the source images (highdicom's Segmentation
reads them from the first one). `seg_plan` decides from the headers, before anything is
predicted, whether a valid SEG can be made: a type-1 value the SEG must carry (DICOM PS3.3:
StudyInstanceUID of the General Study module, FrameOfReferenceUID of the Frame of Reference
module, and the SeriesInstanceUID and SOPInstanceUIDs its references name) absent, empty or
inconsistent means no SEG; an absent type-2 value of the Patient or General Study module is
written empty, and an absent SliceThickness (Pixel Measures, type 1C) is the series' slice step.
The values are filled in copies of the headers: the user's files are never changed.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ichseg import __version__
from ichseg.errors import IchsegError, first_line
from ichseg.scans.scan import SegPlan

CATEGORY = Code("49755003", "SCT", "Morphologically Altered Structure")
INTRACRANIAL_HEMORRHAGE = Code("1386000", "SCT", "Intracranial hemorrhage")
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
# The SEG's own series number: arbitrary, high so viewers list it after the scanner's series.
SEG_SERIES_NUMBER = 901
RESEARCH_NOTE = "research tool, not a medical device"
# A person name of one component: the trailing caret says it is meant so (PS3.5 6.2.1.2).
CONTENT_CREATOR = "ichseg^"
# Type 2 in the SEG's Patient and General Study modules, copied from the source images: an
# absent one is written empty, as the standard allows.
EMPTY_ALLOWED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
# Type 1 values the SEG takes from its source images, each one value for the whole series.
SAME_IN_SERIES = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
# Type 1 and different in every source image: the SEG references each image by it.
EACH_IMAGE = "SOPInstanceUID"


# The start of highdicom's warning about a person name of one component.
_NAME_ADVICE = r"The string .* is unlikely to represent the intended person name"
# What highdicom raises on headers it cannot build a SEG from.
_BUILD_ERRORS = (ValueError, TypeError, AttributeError, KeyError)


class Series(Protocol):
    """What a SEG is made from: a DICOM series as `ichseg.scans.dicom.DicomScan` reads it."""

    path: Path
    shape: tuple[int, ...]
    # The source images' headers in slice order.
    headers: list[Dataset]
    slice_step_mm: float
    # The LPS affine of the scan's grid; resampled for gantry tilt when `tilt_shift_px` is set.
    lps_affine: np.ndarray
    tilt_shift_px: tuple[float, float] | None


def _lacking(headers: Sequence[Dataset]) -> list[str]:
    """The type-1 values a SEG takes from `headers` that they lack or do not agree on."""
    problems = []
    for keyword in SAME_IN_SERIES:
        values = {str(h.get(keyword, "") or "").strip() for h in headers}
        if "" in values:
            problems.append(f"no {keyword}")
        elif len(values) > 1:
            problems.append(f"{len(values)} different {keyword}s")
    uids = [str(h.get(EACH_IMAGE, "") or "").strip() for h in headers]
    if "" in uids:
        problems.append(f"no {EACH_IMAGE} in {uids.count('')} of {len(uids)} images")
    elif len(set(uids)) < len(uids):
        problems.append(f"{len(uids) - len(set(uids))} repeated {EACH_IMAGE}s")
    return problems


def seg_plan(scan: Series) -> SegPlan:
    """Decide from the headers alone, before anything is predicted, whether `scan` can carry a
    valid SEG and which values its headers need filled; the SEG of an empty mask is built as a
    trial, so that whatever else highdicom refuses is known now too."""
    headers = scan.headers
    lacking = _lacking(headers)
    if lacking:
        return SegPlan(f"its headers lack what a valid SEG must carry: {', '.join(lacking)}")
    filled: dict[str, str | float] = {k: "" for k in EMPTY_ALLOWED if k not in headers[0]}
    if any(not h.get("SliceThickness") for h in headers):
        filled["SliceThickness"] = round(scan.slice_step_mm, 6)
    plan = SegPlan(filled=filled)
    try:
        _seg_file(scan, np.zeros(scan.shape[:3], dtype=bool), {}, filled)
    except _BUILD_ERRORS as err:
        return SegPlan(f"highdicom cannot build one from its headers ({first_line(err)})")
    return plan


def _filled_headers(headers: Sequence[Dataset], filled: dict[str, str | float]) -> list[Dataset]:
    """Copies of `headers` with the `filled` values set where a header lacks them; the headers
    themselves (and the files they were read from) are never changed."""
    out = []
    for header in headers:
        copied = Dataset()
        copied.update(header)  # a dataset of its own, holding the same elements
        copied.file_meta = header.file_meta
        for keyword, value in filled.items():
            if not copied.get(keyword):
                if keyword in copied:
                    del copied[keyword]  # an empty element: replaced, not changed in place
                setattr(copied, keyword, value)
        out.append(copied)
    return out


def _resampled_geometry(scan: Series, first: Dataset) -> dict:
    """highdicom's plane positions, orientation and pixel measures of a resampled grid (`first`:
    the first source header, its SliceThickness filled)."""
    lps = scan.lps_affine
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
            slice_thickness=float(first.SliceThickness),
            spacing_between_slices=scan.slice_step_mm,
        ),
    }


def seg_bytes(scan: Series, mask: np.ndarray, parameters: dict[str, str], plan: SegPlan) -> bytes:
    """The SEG file of `mask` (boolean, in the scan's own `[column, row, slice]` grid) as bytes;
    `parameters` (the checkpoints' ids, threshold, ...) name how it was made, `plan`
    (`seg_plan`) which values its headers need filled."""
    if plan.why_not is not None:
        raise IchsegError(f"scan {scan.path}: no DICOM SEG can be made, {plan.why_not}")
    try:
        return _seg_file(scan, mask, parameters, plan.filled)
    except _BUILD_ERRORS as err:
        raise IchsegError(
            f"scan {scan.path}: cannot build a DICOM SEG from its headers ({first_line(err)})"
        ) from None


def _seg_file(
    scan: Series, mask: np.ndarray, parameters: dict[str, str], filled: dict[str, str | float]
) -> bytes:
    """`seg_bytes` without its checks: highdicom's errors as they are."""
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
    headers = _filled_headers(scan.headers, filled)
    tilted = scan.tilt_shift_px is not None
    geometry = _resampled_geometry(scan, headers[0]) if tilted else {}
    with warnings.catch_warnings():
        # A source PatientName of one component ("ANONYMOUS", as de-identification leaves it) is
        # copied as it is; highdicom's advice on how to spell names is not the user's to act on.
        warnings.filterwarnings("ignore", _NAME_ADVICE, UserWarning)
        seg = hd.seg.Segmentation(
            source_images=headers,
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
            content_creator_name=CONTENT_CREATOR,
            series_description=f"ichseg ICH mask ({RESEARCH_NOTE})",
            omit_empty_frames=False,
            **geometry,
        )
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()
