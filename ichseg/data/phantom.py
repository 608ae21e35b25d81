"""A synthetic CT-ICH release: head-CT-like volumes with painted bleeds, in the real layout.

The project's built-in data. The label table follows the statistics of the real release
(PhysioNet CT-ICH 1.3.1, Hssayeni et al. 2020, doi:10.13026/4nae-zg36, its
hemorrhage_diagnosis_raw_ct.csv): 75 patients 49-130 without 59-65, 31-58 slices each, about half
the patients with bleeds spanning runs of slices, the five subtypes in the real mix. Each slice
is drawn upright (anterior up) in Hounsfield units — air, scalp, an elliptical skull, brain with
smooth texture, ventricles — and stored rotated so that `np.rot90(slice, k=1)` shows it upright,
as loaders of the real data do. The mask is exactly the painted bleed, so every hemorrhage slice
has a non-empty mask and every clean slice an empty one. Same seed, same bytes.

The same patients can be written in the layout of every data source (`PHANTOM_LAYOUTS`): PhysioNet's
(the default), INSTANCE 2022's (binary masks), BHSD's (masks valued by its five classes) and an
nnU-Net v2 raw dataset (masks valued by subtype, named in dataset.json). Where a voxel belongs to
two bleeds, the one painted last labels it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ichseg.atomic import atomic_path, file_lock
from ichseg.config_schema import PHANTOM_LAYOUTS, SCHEMA
from ichseg.data.release import (
    CSV_NAME,
    LABEL_CSV_COLUMNS,
    MASK_DIR,
    SCAN_DIR,
    SUBTYPES,
    SliceLabel,
    read_json_object,
)
from ichseg.errors import IchsegError

# Patient numbers of the real release: 49-130 were collected, 59-65 have no scans.
PATIENT_NUMBERS = tuple(p for p in range(49, 131) if not 59 <= p <= 65)
SLICE_MM = 5.0
# What a folder written here holds besides its layout: the parameters it was written with.
PHANTOM_MARKER = "phantom.json"

IVH, IPH, SAH, EDH, SDH = range(5)  # indices into SUBTYPES
# Real release (its hemorrhage_diagnosis_raw_ct.csv): 36 of 75 patients bleed; patients and
# slices per subtype.
_ICH_PATIENTS, _RELEASED_PATIENTS = 36, 75
_SUBTYPE_PATIENTS = (5, 16, 7, 21, 4)
_SUBTYPE_SLICES = (24, 73, 18, 173, 56)
# Fraction of the head height (bottom 0 .. top 1) where each subtype's runs may lie;
# intraventricular runs stay where the ventricles are large.
_RUN_RANGE = {
    IVH: (0.38, 0.72),
    IPH: (0.22, 0.85),
    SAH: (0.3, 0.88),
    EDH: (0.2, 0.85),
    SDH: (0.15, 0.9),
}

_MIN_BLEED_PIXELS = 4  # every hemorrhage slice keeps at least this many mask pixels
_NOISE_HU = 5.0


@dataclass(frozen=True)
class Bleed:
    """One bleed: its subtype, run of slices and shape parameters (head-normalised units)."""

    subtype: int
    first: int  # 0-based index of the first slice of the run
    length: int
    angle: float  # direction from the head centre in the upright image, radians (pi/2 = anterior)
    depth: float  # radial thickness (EDH/SDH/SAH) or radius (IPH), fraction of the head radius
    width: float  # angular half-width (EDH/SDH/SAH, radians) or radial position (IPH)
    hu: float
    shape: int  # seed for the irregular outline

    def extent(self, index: int) -> float:
        """Relative size on slice `index`: grows then shrinks over the run, 0 outside it."""
        step = index - self.first
        if not 0 <= step < self.length:
            return 0.0
        return 0.35 + 0.65 * math.sin(math.pi * (step + 0.5) / self.length)


@dataclass(frozen=True)
class PatientPlan:
    """Everything about one synthetic patient that the labels depend on."""

    patient: int
    n_slices: int
    pixel_mm: float  # in-plane pixel size at 512 x 512
    bleeds: tuple[Bleed, ...]
    fracture: frozenset[int]  # 0-based slice indices with a skull fracture

    def labels(self) -> list[SliceLabel]:
        """The CSV rows of this patient (1-based slice numbers)."""
        rows = []
        for index in range(self.n_slices):
            flags = [0] * len(SUBTYPES)
            for bleed in self.bleeds:
                if bleed.extent(index):
                    flags[bleed.subtype] = 1
            rows.append(
                SliceLabel(
                    patient=self.patient,
                    slice_number=index + 1,
                    subtypes=tuple(flags),
                    no_hemorrhage=int(not any(flags)),
                    fracture=int(index in self.fracture),
                )
            )
        return rows


# How the phantom refuses a value its schema rule (`phantom.<name>`) refuses; the bounds are the
# rule's.
_REFUSALS = {
    "patients": "phantom patients must be at least {rule.ge}, found {value}",
    "seed": "phantom seed: expected an integer in 0..{rule.le}, found {value!r}",
    "layout": "phantom layout: expected {allowed}, found {value!r}",
    "size": "phantom size must be {rule.ge}..{rule.le} pixels, found {value}",
}


def _check(name: str, value: object) -> None:
    """Refuse a value the schema's `phantom.<name>` rule refuses, in the phantom's own words."""
    rule = SCHEMA[f"phantom.{name}"]
    if not rule.accepts(value):
        raise IchsegError(_REFUSALS[name].format(rule=rule, allowed=rule.allowed(), value=value))


def patient_numbers(patients: int) -> list[int]:
    """The first `patients` real patient numbers, continuing past 130 for larger releases."""
    _check("patients", patients)
    extra = range(PATIENT_NUMBERS[-1] + 1, PATIENT_NUMBERS[-1] + 1 + patients)
    return [*PATIENT_NUMBERS, *extra][:patients]


def _subtype_sets(rng: np.random.Generator, n_ich: int) -> list[set[int]]:
    """Subtypes of each bleeding patient, scaled from the real per-subtype patient counts."""
    slots = [
        subtype
        for subtype, count in enumerate(_SUBTYPE_PATIENTS)
        for _ in range(round(count * n_ich / _ICH_PATIENTS))
    ]
    while len(slots) < n_ich:  # small releases: every bleeding patient needs one subtype
        slots.append(int(rng.choice([IPH, EDH])))
    slots = [int(s) for s in rng.permutation(slots)]
    sets = [{slot} for slot in slots[:n_ich]]
    for slot in slots[n_ich:]:
        free = [i for i, chosen in enumerate(sets) if slot not in chosen]
        if free:
            sets[int(rng.choice(free))].add(slot)
    return sets


def _draw_bleed(rng: np.random.Generator, subtype: int, n_slices: int) -> Bleed:
    """A bleed of `subtype` with a run length around the real mean for that subtype."""
    mean = _SUBTYPE_SLICES[subtype] / _SUBTYPE_PATIENTS[subtype]
    low, high = _RUN_RANGE[subtype]
    first_min, last_max = math.ceil(low * n_slices), math.floor(high * n_slices)
    length = int(np.clip(round(rng.gamma(4.0, mean / 4.0)), 1, last_max - first_min + 1))
    first = int(rng.integers(first_min, last_max - length + 2))
    angle = float(rng.uniform(0, 2 * math.pi))
    depth, width = {
        EDH: (rng.uniform(0.07, 0.13), rng.uniform(0.28, 0.45)),
        SDH: (rng.uniform(0.025, 0.05), rng.uniform(0.6, 1.1)),
        SAH: (rng.uniform(0.08, 0.16), rng.uniform(0.25, 0.5)),
        IPH: (rng.uniform(0.06, 0.15), rng.uniform(0.25, 0.6)),
        IVH: (0.0, 0.0),
    }[subtype]
    return Bleed(
        subtype=subtype,
        first=first,
        length=length,
        angle=angle,
        depth=float(depth),
        width=float(width),
        hu=float(rng.uniform(58.0, 82.0)),
        shape=int(rng.integers(2**31)),
    )


def _draw_fracture(rng: np.random.Generator, bleeds: list[Bleed], n_slices: int) -> frozenset[int]:
    """Fractures: mostly over epidural bleeds (a torn meningeal artery), sometimes elsewhere."""
    fracture: set[int] = set()
    for bleed in bleeds:
        chance = 0.85 if bleed.subtype == EDH else 0.12
        if rng.random() < chance:
            lo = max(0, bleed.first - int(rng.integers(0, 2)))
            hi = min(n_slices, bleed.first + bleed.length + int(rng.integers(0, 2)))
            fracture.update(range(lo, hi))
    return frozenset(fracture)


def plan_phantom(patients: int = 75, seed: int = 0) -> list[PatientPlan]:
    """Draw the label-level plan (slices, bleeds, fractures) of every patient; no images."""
    rng = np.random.default_rng([seed, 7])
    numbers = patient_numbers(patients)
    n_slices = [int(np.clip(round(31 + rng.gamma(1.2, 5.4)), 31, 58)) for _ in numbers]
    pixel_mm = rng.uniform(0.31, 0.48, size=len(numbers))
    n_ich = max(1, round(len(numbers) * _ICH_PATIENTS / _RELEASED_PATIENTS))
    bleeding = sorted(int(i) for i in rng.choice(len(numbers), size=n_ich, replace=False))
    subtypes = dict(zip(bleeding, _subtype_sets(rng, n_ich), strict=True))
    plans = []
    for i, patient in enumerate(numbers):
        bleeds = [_draw_bleed(rng, s, n_slices[i]) for s in sorted(subtypes.get(i, ()))]
        plans.append(
            PatientPlan(
                patient=patient,
                n_slices=n_slices[i],
                pixel_mm=float(pixel_mm[i]),
                bleeds=tuple(bleeds),
                fracture=_draw_fracture(rng, bleeds, n_slices[i]),
            )
        )
    return plans


def phantom_labels(plans: list[PatientPlan]) -> list[SliceLabel]:
    """All CSV rows of a planned release, sorted by patient and slice."""
    return [label for plan in plans for label in plan.labels()]


_Window = tuple[slice, slice]


def _turn(theta: np.ndarray, angle: float) -> np.ndarray:
    """Signed angular difference `theta - angle` wrapped to [-pi, pi)."""
    return (theta - angle + np.pi) % (2 * np.pi) - np.pi


class _Head:
    """Per-patient anatomy on the upright pixel grid: coordinates, texture, slice profile."""

    # Radial profile tables: bins per head radius, covering the corners of the smallest slice.
    BINS = 2048
    REACH = 8.0

    def __init__(self, rng: np.random.Generator, size: int, n_slices: int) -> None:
        """Draw head shape and texture of one patient for `size` x `size` slices."""
        self.size = size
        self.n_slices = n_slices
        self.radius_y = rng.uniform(0.40, 0.45) * size  # anterior-posterior semi-axis, pixels
        self.radius_x = self.radius_y * rng.uniform(0.78, 0.86)
        self.centre = size / 2 + rng.uniform(-0.02, 0.02, size=2) * size  # (row, col)
        rows = (np.arange(size, dtype=np.float32) - self.centre[0]) / self.radius_y
        cols = (np.arange(size, dtype=np.float32) - self.centre[1]) / self.radius_x
        # Head-normalised coordinates (1 = outer skull of the largest slice); y grows posterior.
        # The back of the head is a little wider (egg shape) and the outline slightly lumpy.
        self.y = np.repeat(rows[:, None], size, axis=1)
        self.x = np.repeat(cols[None, :], size, axis=0) / (1 + 0.06 * self.y)
        self.theta = np.arctan2(-self.y, self.x)
        lumps = 1 + 0.015 * np.cos(3 * self.theta + rng.uniform(0, 2 * math.pi))
        self.rho = np.sqrt(self.x**2 + self.y**2) * lumps.astype(np.float32)
        self.skull = rng.uniform(0.055, 0.075)
        self.ventricle_tilt = rng.uniform(0.15, 0.3)
        self.textures = self._texture_fields(rng)

    def _texture_fields(self, rng: np.random.Generator, terms: int = 10) -> np.ndarray:
        """Three smooth fields (3, S, S) whose mix drifts with height: sums of separable cosines."""
        grid = np.arange(self.size, dtype=np.float32) / self.size
        freq = np.concatenate([rng.uniform(0.7, 3.5, terms // 2), rng.uniform(5, 12, terms // 2)])
        phases = rng.uniform(0, 2 * math.pi, (2, terms))
        along_rows = np.cos(
            2 * np.pi * np.outer(grid, freq * rng.choice([-1, 1], terms)) + phases[0]
        )
        along_cols = np.cos(2 * np.pi * np.outer(grid, rng.permutation(freq)) + phases[1])
        amp = np.concatenate([np.full(terms // 2, 2.0), np.full(terms // 2, 1.0)])
        weight = rng.standard_normal(terms) * amp
        drift = rng.standard_normal(terms) * amp * 0.6
        phase = rng.uniform(0, 2 * math.pi, terms)
        # weight + drift * sin(2 pi z + phase) = weight + sin(2 pi z) a + cos(2 pi z) b
        mix = np.stack([weight, drift * np.cos(phase), drift * np.sin(phase)])
        # einsum, not matmul: a threaded BLAS is slow for these thin products on a busy machine.
        return np.einsum("tk,ik,jk->tij", mix, along_rows, along_cols).astype(np.float32)

    def scale(self, index: int) -> float:
        """Head size on slice `index` relative to the largest: smaller at base and vertex."""
        z = (index + 0.5) / self.n_slices
        return math.sqrt(max(1 - ((z - 0.42) / 0.68) ** 2, 0.12))

    def ventricle_size(self, index: int) -> float:
        """Lateral ventricle size on slice `index` (0 where there are none)."""
        z = (index + 0.5) / self.n_slices
        return math.sqrt(max(1 - ((z - 0.55) / 0.27) ** 2, 0.0))

    def texture(self, index: int) -> np.ndarray:
        """Smooth brain texture of slice `index` in HU (zero mean, a few HU)."""
        z = 2 * math.pi * (index + 0.5) / self.n_slices
        fields = self.textures
        return fields[0] + math.sin(z) * fields[1] + math.cos(z) * fields[2]

    def pixels(self, scale: float, pixels: float) -> float:
        """`pixels` in head-normalised units on a slice of relative size `scale`."""
        return pixels / (self.radius_y * scale)

    def window(self, scale: float, x: np.ndarray, y: np.ndarray, margin: float = 3.0) -> _Window:
        """Pixel box around slice-normalised points (x, y), padded by `margin` pixels."""
        y_head = y * scale
        rows = self.centre[0] + y_head * self.radius_y
        cols = self.centre[1] + x * scale * (1 + 0.06 * y_head) * self.radius_x
        pad = margin + 0.03 * self.radius_y * scale  # the lumpy outline moves edges by <2 %
        r0, r1 = (int(np.clip(v, 0, self.size)) for v in (rows.min() - pad, rows.max() + pad + 1))
        c0, c1 = (int(np.clip(v, 0, self.size)) for v in (cols.min() - pad, cols.max() + pad + 1))
        return slice(r0, r1), slice(c0, c1)

    def profile(self, scale: float, inner: float) -> tuple[np.ndarray, np.ndarray]:
        """HU and texture gain as functions of the unscaled radius, as lookup tables."""
        rho = np.arange(int(self.REACH * self.BINS), dtype=np.float32) / (self.BINS * scale)
        hu = np.full(rho.shape, -1000.0, dtype=np.float32)
        gain = np.zeros(rho.shape, dtype=np.float32)
        hu[rho < 1 + max(0.04, self.pixels(scale, 1.0))] = 35.0  # scalp
        depth = np.clip((1 - rho) / (1 - inner), 0, 1)
        skull = (rho < 1) & (rho >= inner)
        # Dense outer and inner tables, spongier diploe between them.
        hu[skull] = (1450 - 2800 * depth * (1 - depth))[skull]
        gain[skull] = 20.0
        # Grey matter (~38 HU) at the cortex, white matter (~27 HU) inside, CSF rim at the surface.
        relative = rho / inner
        brain = relative < 1
        hu[brain] = (27 + 11 * np.clip((relative - 0.72) / 0.18, 0, 1))[brain]
        gain[brain] = 1.0
        rim = brain & (relative > 0.98)
        hu[rim], gain[rim] = 8.0, 0.0
        return hu, gain


class _Slice:
    """One upright slice being painted into `img` and `mask` (views into the volume)."""

    def __init__(self, head: _Head, index: int, img: np.ndarray, mask: np.ndarray) -> None:
        """Paint air, scalp, skull, brain and ventricles of slice `index` into `img`."""
        self.head = head
        self.index = index
        self.scale = head.scale(index)
        self.inner = 1 - max(head.skull, head.pixels(self.scale, 1.6))
        self.texture = head.texture(index)
        table, gain = head.profile(self.scale, self.inner)
        bins = (head.rho * head.BINS).astype(np.int32)
        np.take(table, bins, out=img)
        img += np.take(gain, bins) * self.texture
        self.img, self.mask = img, mask
        self.ventricle_window, self.ventricles = self._ventricles()
        view = img[self.ventricle_window]
        view[self.ventricles] = 6.0 + 0.3 * self.texture[self.ventricle_window][self.ventricles]

    def coords(self, window: _Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slice-normalised x, y and radius inside `window`."""
        head, scale = self.head, self.scale
        return head.x[window] / scale, head.y[window] / scale, head.rho[window] / scale

    def _ventricles(self) -> tuple[_Window, np.ndarray]:
        """Two lateral ventricles, tilted like a butterfly, sized by the slice height."""
        size = self.head.ventricle_size(self.index)
        semi_x = max(0.06 * size, self.head.pixels(self.scale, 1.5))
        semi_y = max(0.24 * size, self.head.pixels(self.scale, 2.5))
        reach = 0.12 + semi_x + semi_y
        window = self.head.window(
            self.scale, np.array([-reach, reach]), 0.03 + np.array([-1, 1]) * semi_y
        )
        x, y, rho = self.coords(window)
        found = np.zeros(x.shape, dtype=bool)
        if size <= 0:
            return window, found
        for side in (-1, 1):
            tilt = side * self.head.ventricle_tilt
            dx, dy = x - side * 0.12, y - 0.03
            along = dy * math.cos(tilt) + dx * math.sin(tilt)
            across = dx * math.cos(tilt) - dy * math.sin(tilt)
            found |= (across / semi_x) ** 2 + (along / semi_y) ** 2 < 1
        return window, found & (rho < self.inner)

    def _arc(
        self, angle: float, half: float, low: float, high: float
    ) -> tuple[_Window, np.ndarray, np.ndarray]:
        """Box around the ring sector `angle` +- `half`, radii low..high; its radius and turn."""
        angles = np.linspace(angle - half, angle + half, 17)
        radii = np.array([[low], [high]]) / 0.98
        window = self.head.window(self.scale, radii * np.cos(angles), -radii * np.sin(angles))
        _, _, rho = self.coords(window)
        return window, rho, _turn(self.head.theta[window], angle)

    def paint(self, bleed: Bleed) -> None:
        """Paint `bleed` at its size on this slice into image and mask."""
        grow = bleed.extent(self.index)
        head, scale, inner = self.head, self.scale, self.inner
        if bleed.subtype == EDH:
            # Biconvex lens pressed against the inner skull, thickest in the middle.
            half = bleed.width * (0.6 + 0.4 * grow)
            thick = max(bleed.depth * grow, head.pixels(scale, 2.5))
            window, rho, turn = self._arc(bleed.angle, half, inner - thick, inner)
            lens = thick * (1 - (turn / half) ** 2)
            region = (rho < inner) & (rho > inner - lens) & (np.abs(turn) < half)
        elif bleed.subtype == SDH:
            # Thin crescent along the inner skull over a long arc, tapering at both ends.
            half = bleed.width * (0.7 + 0.3 * grow)
            thick = max(bleed.depth * math.sqrt(grow), head.pixels(scale, 1.8))
            window, rho, turn = self._arc(bleed.angle, half, inner - thick, inner)
            crescent = thick * np.sqrt(np.clip(1 - (turn / half) ** 2, 0, 1))
            region = (rho < inner) & (rho > inner - crescent) & (np.abs(turn) < half)
        elif bleed.subtype == SAH:
            window, region = self._sulcal_streaks(bleed, grow)
        elif bleed.subtype == IPH:
            window, region = self._blob(bleed, grow)
        else:
            window, region = self._ventricle_layer(bleed, grow)
        if np.count_nonzero(region) < _MIN_BLEED_PIXELS:
            window, region = (slice(None), slice(None)), self._nearest_brain(bleed)
        view = self.img[window]
        view[region] = bleed.hu + self.texture[window][region]
        self.mask[window][region] = bleed.subtype + 1

    def _sulcal_streaks(self, bleed: Bleed, grow: float) -> tuple[_Window, np.ndarray]:
        """Thin blood-filled sulci: short radial lines from the brain surface inwards."""
        shape = np.random.default_rng(bleed.shape)
        count = int(shape.integers(3, 6))
        offsets = shape.uniform(-bleed.width, bleed.width, count)
        lengths = shape.uniform(0.5, 1.0, count) * bleed.depth
        reach = max(bleed.depth * grow, self.head.pixels(self.scale, 3.0))
        half = bleed.width + 0.05
        window, rho, turn = self._arc(bleed.angle, half, self.inner - reach, self.inner)
        # Constant width in pixels: the angle a streak covers shrinks with the radius.
        pixels = self.head.radius_y * self.scale * np.maximum(rho, 0.05)
        width = max(0.7, 0.004 * self.head.radius_y) / pixels
        region = np.zeros(rho.shape, dtype=bool)
        for offset, length in zip(offsets, lengths, strict=True):
            depth = max(length * grow, self.head.pixels(self.scale, 3.0))
            region |= (np.abs(turn - offset) < width) & (rho > self.inner - depth)
        # Blood also fills the subarachnoid space over the surface between the streaks.
        region |= (rho > 0.98 * self.inner) & (np.abs(turn) < bleed.width * (0.3 + 0.7 * grow))
        return window, region & (rho < self.inner)

    def _blob(self, bleed: Bleed, grow: float) -> tuple[_Window, np.ndarray]:
        """Irregular intraparenchymal blob deep in the brain."""
        cx, cy = self._anchor(bleed)
        radius = max(bleed.depth * grow, self.head.pixels(self.scale, 2.0))
        reach = 1.4 * radius
        window = self.head.window(
            self.scale, cx + np.array([-reach, reach]), cy + np.array([-reach, reach])
        )
        x, y, rho = self.coords(window)
        dx, dy = x - cx, y - cy
        shape = np.random.default_rng(bleed.shape).uniform(0, 2 * math.pi, 2)
        phi = np.arctan2(dy, dx)
        outline = radius * (
            1 + 0.22 * np.cos(3 * phi + shape[0]) + 0.12 * np.cos(5 * phi + shape[1])
        )
        return window, (dx**2 + dy**2 < outline**2) & (rho < self.inner * 0.95)

    def _ventricle_side(self, bleed: Bleed) -> int:
        """Which lateral ventricle bleeds: -1 or 1 (image left or right), 0 for both."""
        return 0 if bleed.shape % 3 == 0 else (1 if math.cos(bleed.angle) > 0 else -1)

    def _ventricle_layer(self, bleed: Bleed, grow: float) -> tuple[_Window, np.ndarray]:
        """Blood settled in the dependent (posterior) part of one or both lateral ventricles."""
        side = self._ventricle_side(bleed)
        window, region = self.ventricle_window, self.ventricles
        if side:
            region = region & (self.coords(window)[0] * side > 0)
        rows = np.nonzero(region.any(axis=1))[0]
        if rows.size == 0:
            return window, region
        level = rows[-1] - (0.25 + 0.45 * grow) * (rows[-1] - rows[0])
        return window, region & (np.arange(region.shape[0])[:, None] >= level)

    def _anchor(self, bleed: Bleed) -> tuple[float, float]:
        """A point (x, y) inside the brain where the bleed sits on this slice."""
        if bleed.subtype == IVH:
            return 0.12 * (self._ventricle_side(bleed) or 1), 0.1
        radial = self.inner * (bleed.width if bleed.subtype == IPH else 0.92)
        return radial * math.cos(bleed.angle), -radial * math.sin(bleed.angle)

    def _nearest_brain(self, bleed: Bleed) -> np.ndarray:
        """The few brain pixels nearest the bleed's anchor, so tiny bleeds survive small sizes."""
        ax, ay = self._anchor(bleed)
        x, y, rho = self.coords((slice(None), slice(None)))
        distance = np.where(rho < self.inner, (x - ax) ** 2 + (y - ay) ** 2, np.inf).ravel()
        nearest = np.argpartition(distance, _MIN_BLEED_PIXELS)[:_MIN_BLEED_PIXELS]
        region = np.zeros(distance.size, dtype=bool)
        region[nearest] = True
        return region.reshape(x.shape)

    def crack(self, angle: float) -> None:
        """A fracture line through the skull at `angle` (soft tissue where bone was)."""
        width = max(0.01, self.head.pixels(self.scale, 0.8))
        window, rho, turn = self._arc(angle, width, self.inner, 1.0)
        line = (rho < 1) & (rho >= self.inner) & (np.abs(turn) < width)
        self.img[window][line] = 45.0


def render_patient(plan: PatientPlan, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Upright slices of one patient: HU as int16 and labels as uint8, both (N, size, size); a
    label is 0 outside bleeds, else the subtype index + 1 of the bleed painted there last."""
    rng = np.random.default_rng([seed, plan.patient])
    head = _Head(rng, size, plan.n_slices)
    # The fracture line crosses the skull over the bleed it came with, an epidural one first.
    causes = sorted(plan.bleeds, key=lambda bleed: bleed.subtype != EDH)
    crack = causes[0].angle if causes else float(rng.uniform(0, 2 * math.pi))
    hu = np.empty((plan.n_slices, size, size), dtype=np.float32)
    mask = np.zeros((plan.n_slices, size, size), dtype=np.uint8)
    for index in range(plan.n_slices):
        layer = _Slice(head, index, hu[index], mask[index])
        for bleed in plan.bleeds:
            if bleed.extent(index):
                layer.paint(bleed)
        if index in plan.fracture:
            layer.crack(crack)
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * _NOISE_HU
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), mask


def to_stored(upright: np.ndarray) -> np.ndarray:
    """(N, H, W) upright slices -> (H, W, N) volume; `np.rot90(v[..., n], k=1)` is upright."""
    return np.moveaxis(np.rot90(upright, k=-1, axes=(1, 2)), 0, -1)


def _affine(plan: PatientPlan, size: int) -> np.ndarray:
    """Voxel-to-world (RAS, mm) matrix: the patient's pixel size, 5 mm slices, centred."""
    pixel = plan.pixel_mm * 512 / size
    # Stored axis 0 runs to the patient's left, axis 1 to anterior, axis 2 upwards.
    affine = np.diag([-pixel, pixel, SLICE_MM, 1.0])
    affine[:3, 3] = (pixel * size / 2, -pixel * size / 2, -SLICE_MM * plan.n_slices / 2)
    return affine


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write an uncompressed NIfTI-1 file with millimetre units."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def _labels_csv(labels: list[SliceLabel]) -> str:
    """The diagnosis CSV text in the real release's column order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LABEL_CSV_COLUMNS)
    for label in labels:
        row = (label.patient, label.slice_number, *label.subtypes, label.no_hemorrhage)
        writer.writerow((*row, label.fracture))
    return out.getvalue()


def _demographics_csv(plans: list[PatientPlan], seed: int) -> str:
    """Patient_demographics.csv like the real one: merged two-row header, footer summaries."""
    rng = np.random.default_rng([seed, 11])
    by_number = {plan.patient: plan for plan in plans}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    group = ["Patient Number", "Age (years)", "Gender", "Hemorrhage type based on the CT scan"]
    writer.writerow([*group, "", "", "", "", "No hemorrhage", "Fracture (yes 1/no 0)", "Note"])
    writer.writerow(["", "", "", *SUBTYPES, "", "", ""])
    ages = []
    for number in range(plans[0].patient, plans[-1].patient + 1):
        age = int(np.clip(rng.gamma(2.0, 14.0), 1, 72))
        gender = "Male" if rng.random() < 0.56 else "Female"
        plan = by_number.get(number)
        if plan is None:
            writer.writerow(
                [number, age, gender, "", "", "", "", "", "", "", "no CT scans released"]
            )
            continue
        ages.append(age)
        flags = [int(any(b.subtype == s for b in plan.bleeds)) for s in range(len(SUBTYPES))]
        writer.writerow(
            [number, age, gender, *flags, int(not plan.bleeds), int(bool(plan.fracture)), ""]
        )
    writer.writerow([])
    writer.writerow(["Total patients with scans", len(plans)])
    writer.writerow(["Mean age", f"{np.mean(ages):.1f}"])
    return out.getvalue()


_README = """Synthetic CT-ICH phantom release (ichseg), in the {layout} layout.

NOT PATIENT DATA. Every volume, mask and table here was generated by ichseg.data.phantom with
the parameters in phantom.json. It copies the folder layout of the {layout} data source and
the label statistics of PhysioNet CT-ICH 1.3.1, so the pipeline runs end to end without
restricted real data.
"""

# BHSD's mask values (its paper: 1 epidural .. 5 subdural) for the phantom's subtype indices.
_BHSD_VALUE = {IVH: 3, IPH: 2, SAH: 4, EDH: 1, SDH: 5}
_BHSD_LUT = np.array([0, *(_BHSD_VALUE[i] for i in range(len(SUBTYPES)))], dtype=np.uint8)


def check_layout(layout: str) -> None:
    """Refuse a layout the phantom does not write."""
    _check("layout", layout)


def _check_params(patients: int, size: int, seed: int, layout: str = "physionet") -> None:
    """Reject parameters the generator cannot honour (the schema's `phantom.*` rules)."""
    for name, value in (("patients", patients), ("seed", seed), ("layout", layout), ("size", size)):
        _check(name, value)


def phantom_params(patients: int, size: int, seed: int, layout: str = "physionet") -> dict:
    """What phantom.json records; a PhysioNet-layout phantom's is as it always was."""
    params: dict = {"patients": patients, "size": size, "seed": seed}
    if layout != "physionet":
        params["layout"] = layout
    return params


def _bhsd_name(seed: int, patient: int) -> str:
    """A BHSD-like file stem `ID_xxxxxxxx_ID_xxxxxxxxxx` (study and series ids), fixed per seed."""
    digits = np.random.default_rng([seed, patient, 13]).integers(0, 16, 18)
    hexed = "".join(f"{d:x}" for d in digits)
    return f"ID_{hexed[:8]}_ID_{hexed[8:]}"


def _write_layout(out: Path, plans: list[PatientPlan], size: int, seed: int, layout: str) -> None:
    """The volumes and label files of every patient in `layout`."""
    for number, plan in enumerate(plans, start=1):
        hu, labels = render_patient(plan, size, seed)
        affine = _affine(plan, size)
        scan, mask = to_stored(hu), to_stored(labels)
        if layout == "physionet":
            paths = (
                out / SCAN_DIR / f"{plan.patient:03d}.nii",
                out / MASK_DIR / f"{plan.patient:03d}.nii",
            )
            mask = (mask > 0).astype(np.uint8)
        elif layout == "instance22":
            paths = (
                out / "train/data" / f"{number:03d}.nii.gz",
                out / "train/label" / f"{number:03d}.nii.gz",
            )
            mask = (mask > 0).astype(np.uint8)
        elif layout == "bhsd":
            stem = _bhsd_name(seed, plan.patient)
            folder = out / "label_192"
            paths = (
                folder / "images" / f"{stem}.nii.gz",
                folder / "ground truths" / f"{stem}.nii.gz",
            )
            mask = _BHSD_LUT[mask]
        else:
            stem = f"ICH_{number:03d}"
            paths = (out / "imagesTr" / f"{stem}_0000.nii.gz", out / "labelsTr" / f"{stem}.nii.gz")
        for data, path in zip((scan, mask), paths, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            _save_nifti(data, affine, path)
    if layout == "physionet":
        (out / CSV_NAME).write_text(_labels_csv(phantom_labels(plans)), encoding="utf-8")
        demographics = _demographics_csv(plans, seed)
        (out / "Patient_demographics.csv").write_text(demographics, encoding="utf-8")
    elif layout == "bhsd":
        names = {value: SUBTYPES[index] for index, value in _BHSD_VALUE.items()}
        labels = {"0": "background", **{str(v): names[v] for v in sorted(names)}}
        dataset = {"name": "BHSD layout, synthetic", "labels": labels, "numTraining": len(plans)}
        (out / "label_192" / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n")
    elif layout == "nnunet_raw":
        labels = {"background": 0, **{name.lower(): i + 1 for i, name in enumerate(SUBTYPES)}}
        dataset = {
            "channel_names": {"0": "CT"},
            "labels": labels,
            "numTraining": len(plans),
            "file_ending": ".nii.gz",
            "name": "synthetic ICH phantom",
        }
        (out / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n")
    readme = _README.format(layout=layout)
    (out / "Read_me.txt").write_text(readme, encoding="utf-8")


def write_phantom(
    out: str | Path, patients: int = 75, size: int = 512, seed: int = 0, layout: str = "physionet"
) -> Path:
    """Write a synthetic release in `layout` into `out` (created if needed) and return it."""
    _check_params(patients, size, seed, layout)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_layout(out, plan_phantom(patients, seed), size, seed, layout)
    params = phantom_params(patients, size, seed, layout)
    (out / PHANTOM_MARKER).write_text(json.dumps(params, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _settings(params: dict) -> dict:
    """A phantom's parameters with its layout spelled out (phantom.json leaves out physionet)."""
    return {"layout": "physionet", **params}


def _other_phantom(root: Path, found: dict, asked: dict) -> str:
    """Why `root`'s phantom is not the one asked for, and what to do instead of removing it."""
    found, asked = _settings(found), _settings(asked)
    keys = [key for key in asked if found.get(key) != asked[key]]
    holds = ", ".join(f"{key}={found.get(key)}" for key in keys)
    wanted = ", ".join(f"{key}={asked[key]}" for key in keys)
    layout = found.get("layout")
    read = (
        f"read that one as a release: --source {layout} (train.py: data={layout} "
        f"data.source.root={root})"
        if layout in PHANTOM_LAYOUTS
        else "read that one with the ichseg that wrote it"
    )
    return (
        f"{root}: holds a phantom with {holds} where {wanted} was expected; it is left as it "
        f"is: give the phantom asked for another folder, or {read}"
    )


def is_phantom(root: Path, params: dict) -> bool:
    """True if `root` already holds this phantom; raise if it holds something else (a user's
    folder, a real release, another phantom), which is never changed or removed."""
    if not root.exists():
        return False
    if root.is_dir() and not any(root.iterdir()):
        return False
    marker = root / PHANTOM_MARKER
    if not marker.is_file():
        raise IchsegError(
            f"{root}: exists and is not a phantom release (no {PHANTOM_MARKER}); a phantom is "
            "written only into a new or empty folder: choose another one (a real release is "
            "read with its own data source, e.g. --source physionet)"
        )
    found = read_json_object(marker)
    if found != params:
        raise IchsegError(_other_phantom(root, found, params))
    return True


def ensure_phantom(
    root: str | Path, patients: int = 75, size: int = 512, seed: int = 0, layout: str = "physionet"
) -> Path:
    """Return `root`, writing the phantom there once; concurrent callers get one release."""
    _check_params(patients, size, seed, layout)
    root = Path(root)
    params = phantom_params(patients, size, seed, layout)
    # The folder appears by one atomic rename, so its marker file means it is complete.
    if is_phantom(root, params):
        return root
    with file_lock(root.parent / f".{root.name}.lock", remove_on_failure=True):
        if not is_phantom(root, params):
            with atomic_path(root, is_dir=True, owned_by=(PHANTOM_MARKER,)) as tmp:
                write_phantom(tmp, patients, size, seed, layout)
    return root
