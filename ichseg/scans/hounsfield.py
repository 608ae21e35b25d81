"""Whether a volume is big enough to be a scan and looks like head CT in Hounsfield units.

Every command that reads CT voxels (`prepare`, `evaluate` and training through
`VolumeRelease.load_patient`, `predict` through its scan reader) calls `check_ct_size` and
`check_hounsfield` before computing anything, because a volume in other units is not an error
anywhere downstream: it is windowed, segmented and measured into a number that looks like a
result. The rule, on the voxels after the header's
slope and intercept:

- in-plane size: at least `MIN_IN_PLANE` pixels along both in-plane axes (the networks pool four
  times; a real head CT has hundreds);
- real numbers: not complex, not RGB;
- range: every voxel within `VALUE_RANGE`, the signed 16-bit range CT is stored in (padding
  values such as -2048, -3024 or -32768 included);
- not a mask: not only the values 0 and 1;
- air: at least `MIN_AIR_FRACTION` of the voxels at or below `AIR_MAX_HU` (air around and inside
  a head reads about -1000 HU, partial-volume air in a small or cropped field of view higher:
  pydicom's bundled CT slice has no voxel below -896; nothing else in a head is below -200, and
  the padding outside a scanner's field of view counts too, so a cropped head still passes on
  its sinuses and corners);
- median: the median of the voxels inside the field of view (above `PADDING_BELOW_HU`) within
  `MEDIAN_RANGE`: mostly air (-1000) or soft tissue (0 to 80), never bone;
- a head: at least `MIN_TISSUE_FRACTION` of the voxels inside the field of view within
  `TISSUE_HU` (fat about -100, CSF and brain 0 to 45, blood 40 to 90): a volume of air, or air
  and bone, has no brain to segment, and a network asked to segment it finds whatever it finds.

`allow_non_hu=True` skips the unit rules (not the size, and not complex data) for a user who
knows the volume is right; the commands record that they were told so.
"""

from __future__ import annotations

import numpy as np

from ichseg.errors import IchsegError

MIN_IN_PLANE = 16
VALUE_RANGE = (-32768.0, 32767.0)
AIR_MAX_HU = -800.0
MIN_AIR_FRACTION = 1e-3
PADDING_BELOW_HU = -1100.0
MEDIAN_RANGE = (-1100.0, 300.0)
TISSUE_HU = (-100.0, 100.0)
MIN_TISSUE_FRACTION = 1e-2
ALLOW_HINT = "pass --allow-non-hu (train.py: data.allow_non_hu=true) if it really is CT in HU"


def check_ct_size(shape: tuple[int, ...], label: str) -> None:
    """Raise unless both in-plane axes of `shape` (H, W, slices in the training orientation,
    `ichseg.scans.orientation`) hold `MIN_IN_PLANE` pixels."""
    if min(shape[:2]) < MIN_IN_PLANE:
        raise IchsegError(
            f"{label}: in-plane size {shape[0]}x{shape[1]} is too small to be a CT scan "
            f"(shape {tuple(shape)}); expected at least {MIN_IN_PLANE}x{MIN_IN_PLANE} pixels"
        )


def check_stored_type(dtype: np.dtype, label: str) -> None:
    """Raise unless voxels of the stored `dtype` are real numbers (not complex, not RGB)."""
    dtype = np.dtype(dtype)
    if dtype.fields is not None or not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        kind = "complex-valued" if np.issubdtype(dtype, np.complexfloating) else "not real"
        raise IchsegError(
            f"{label}: voxels are stored as {dtype} ({kind}); expected one real number per voxel"
        )


def check_finite(volume: np.ndarray, label: str, context: str = "") -> None:
    """Raise unless every voxel is a finite number: `label: N voxels are NaN or infinite` and
    the `context` (e.g. the patient)."""
    bad = volume.size - int(np.count_nonzero(np.isfinite(volume)))
    if bad:
        raise IchsegError(f"{label}: {bad} voxels are NaN or infinite{context}")


def check_hounsfield(hu: np.ndarray, label: str, allow_non_hu: bool = False) -> None:
    """Raise with the likely cause unless the finite volume `hu` (any axis order) looks like
    head CT in HU by the module's rule; nothing is checked when `allow_non_hu`."""
    if allow_non_hu:
        return
    cause = _non_hu_cause(hu)
    if cause:
        raise IchsegError(
            f"{label}: does not look like CT in Hounsfield units: {cause}; {ALLOW_HINT}"
        )


def _non_hu_cause(hu: np.ndarray) -> str | None:
    """What is wrong with `hu` as head CT in HU, with the likely cause; None when nothing."""
    low, high = float(hu.min()), float(hu.max())
    found = f"values {low:.4g}..{high:.4g}"
    if low < VALUE_RANGE[0] or high > VALUE_RANGE[1]:
        return (
            f"{found}, outside the 16-bit range {VALUE_RANGE[0]:g}..{VALUE_RANGE[1]:g} CT is "
            "stored in (scaled data, or a wrong scale slope in the header)"
        )
    if low >= 0 and high <= 1 and np.all((hu == 0) | (hu == 1)):
        return "only the values 0 and 1: looks like a 0/1 mask, not a scan"
    air = np.count_nonzero(hu <= AIR_MAX_HU) / hu.size
    if air < MIN_AIR_FRACTION:
        if low >= -50 and high >= 1000:
            cause = "looks like HU+1024 stored without its intercept (-1024)"
        elif low >= 0 and high <= 1:
            cause = "looks like intensities scaled to 0..1"
        elif low >= 0 and high <= 255:
            cause = "looks like an 8-bit picture"
        else:
            cause = "not CT in HU"
        return (
            f"{found}, {100 * air:.2g}% of voxels at or below {AIR_MAX_HU:g} HU where a head CT "
            f"has air at -1000: {cause}"
        )
    # Every other pixel along two axes: the median of a quarter of a volume is the same to a few
    # HU.
    sample = hu[::2, ::2]
    inside = sample[sample > PADDING_BELOW_HU]
    median = float(np.median(inside)) if inside.size else low
    if not MEDIAN_RANGE[0] <= median <= MEDIAN_RANGE[1]:
        shifted = MEDIAN_RANGE[0] <= median - 1024 <= MEDIAN_RANGE[1]
        cause = (
            "looks like HU+1024 stored without its intercept (-1024)"
            if shifted
            else ("not CT in HU")
        )
        return (
            f"{found}, median {median:.4g} inside the field of view where head CT has "
            f"{MEDIAN_RANGE[0]:g}..{MEDIAN_RANGE[1]:g} (air or soft tissue): {cause}"
        )
    tissue = np.count_nonzero((inside >= TISSUE_HU[0]) & (inside <= TISSUE_HU[1]))
    tissue /= max(inside.size, 1)
    if tissue < MIN_TISSUE_FRACTION:
        return (
            f"{found}, {100 * tissue:.2g}% of the field of view in {TISSUE_HU[0]:g}.."
            f"{TISSUE_HU[1]:g} HU where a head CT has its brain: no head in the volume (only air, "
            "or air and bone)"
        )
    return None
