"""A release whose only labels are its masks: per-slice labels and subtypes derived from them.

Sources without a per-slice table (INSTANCE 2022, BHSD, nnU-Net raw datasets) label a slice as
hemorrhage when its mask has any voxel > 0, and with a subtype when the mask holds a value the
label map names as one (`SUBTYPE_NAMES`), exactly as PhysioNet's CSV flags them. Slices are those
of the training orientation (`ichseg.scans.orientation`), so any stored axis order works. Mask
values must be integers the label map lists; anything else is refused with one line.

A label map that names several subtypes is a claim the masks must be able to carry: a release
whose masks, all of them together, hold no value above 1 is a binary export, in which every
bleed would read as the subtype of value 1. It is refused unless it is read with binary labels
(`binary=True`: label map {1: hemorrhage}, no subtypes); a release with values above 1 in some
masks is a subtype release, whose masks of only 0 and 1 show bleeds of the subtype of value 1.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ichseg.data.release import SUBTYPES, Case, SliceLabel, VolumeRelease
from ichseg.errors import IchsegError
from ichseg.scans.nifti import load_nifti
from ichseg.scans.orientation import Reorientation, reorientation

# Names (lower case, letters only) a label map may give each of `SUBTYPES`, in its order.
SUBTYPE_NAMES = (
    ("intraventricular", "ivh"),
    ("intraparenchymal", "iph", "intracerebral"),
    ("subarachnoid", "sah"),
    ("epidural", "extradural", "edh"),
    ("subdural", "sdh"),
)


def subtype_index(name: str) -> int | None:
    """The index into `SUBTYPES` a label name means (e.g. "EDH", "Epidural_hemorrhage"), if any."""
    words = re.findall(r"[a-z]+", name.lower())
    for index, synonyms in enumerate(SUBTYPE_NAMES):
        if any(word in synonyms or word.startswith(synonyms[0]) for word in words):
            return index
    return None


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise IchsegError(f"{path}: cannot read the file ({err.strerror})") from None


# The label map of masks read with binary labels.
BINARY_LABEL_MAP = {1: "hemorrhage"}
# How a user reads a binary export of a subtype layout, in messages.
BINARY_SETTING = (
    "data.source.binary_labels=true (train.py) or --binary-labels "
    "(ichseg prepare, evaluate, report)"
)


class MaskRelease(VolumeRelease):
    """Cases with masks whose values are the label map's: labels read from the masks on demand."""

    def __init__(
        self,
        root: Path,
        source: str,
        cases: list[Case],
        label_map: dict[int, str],
        *,
        binary: bool = False,
        synthetic: bool = False,
    ) -> None:
        """Number `cases` 1..n in name order; hash the masks and the label map (labels_sha256).
        `binary` reads the masks as 0/1 without subtypes, whatever `label_map` says;
        `synthetic` marks a release ichseg's phantom wrote, whose values are its subtypes."""
        self.binary = binary
        self.synthetic = synthetic
        if binary:
            label_map = dict(BINARY_LABEL_MAP)
        if not cases:
            raise IchsegError(f"{root}: expected at least one scan with a mask, found none")
        ordered = sorted(cases, key=lambda case: case.name)
        numbered = {number: case for number, case in enumerate(ordered, start=1)}
        foreground = {value: name for value, name in label_map.items() if value > 0}
        if not foreground:
            raise IchsegError(f"{root}: the label map {label_map} names no value > 0 (hemorrhage)")
        self.subtype_of = {
            value: index
            for value, name in foreground.items()
            if (index := subtype_index(name)) is not None
        }
        payload = {
            "masks": [[case.name, _file_sha256(case.mask)] for case in ordered],
            "label_map": {str(k): v for k, v in sorted(label_map.items())},
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        subtypes_from = "label map" if self.subtype_of else None
        super().__init__(root, source, numbered, digest, dict(label_map), subtypes_from)
        self._labels: list[SliceLabel] | None = None

    @property
    def labels(self) -> list[SliceLabel]:
        """Every slice's label from its mask (each mask is read once, when first asked); a
        binary export of a subtype label map is refused here, once every mask was read."""
        if self._labels is None:
            labels, present = [], set()
            for patient in self.patients:
                name = self._relative(self.mask_path(patient))
                values, affine, _ = load_nifti(self.mask_path(patient), name)
                found, held = self._slice_labels(patient, values, reorientation(affine, name), name)
                labels += found
                present |= held
            self._check_carries_subtypes(present)
            self._labels = labels
        return self._labels

    def _check_carries_subtypes(self, present: set[int]) -> None:
        """Refuse a release whose masks hold only 0 and 1 where the label map names several
        subtypes: read so, every bleed would be the subtype of value 1."""
        if self.synthetic or 1 not in self.subtype_of or len(self.subtype_of) < 2:
            return
        if present - {0} != {1}:
            return
        masks = self.mask_path(self.patients[0]).parent
        claimed = ", ".join(f"{v} {self.label_map[v]}" for v in sorted(self.subtype_of))
        raise IchsegError(
            f"{masks}: all {len(self.patients)} masks (e.g. "
            f"{self.mask_path(self.patients[0]).name}) hold only the labels 0 and 1, but the "
            f"{self.source} label map names subtypes ({claimed}): read so, every bleed would "
            f"be {self.label_map[1]}; if the masks are a binary export, read them without "
            f"subtypes with {BINARY_SETTING}"
        )

    def _checked_values(self, values: np.ndarray, mask_name: str) -> tuple[np.ndarray, set[int]]:
        """The mask as integers and the values it holds, or an IchsegError when it holds a value
        the label map lacks."""
        rounded = np.rint(values)
        if not np.array_equal(rounded, values):
            odd = values[rounded != values].flat[0]
            raise IchsegError(
                f"{mask_name}: expected integer label values {sorted(self.label_map)}, "
                f"found {float(odd):g}"
            )
        present = np.unique(rounded.astype(np.int64))
        unknown = [int(v) for v in present if v != 0 and int(v) not in self.label_map]
        if unknown and self.binary:
            raise IchsegError(
                f"{mask_name}: value(s) {unknown[:5]} in a release read with binary labels "
                "(0 and 1 only): its masks carry classes; read it without the binary-labels "
                "setting"
            )
        if unknown:
            raise IchsegError(
                f"{mask_name}: value(s) {unknown[:5]} are not in the label map "
                f"{ {k: v for k, v in sorted(self.label_map.items())} }"
            )
        return rounded.astype(np.int64), {int(v) for v in present}

    def _slice_labels(
        self, patient: int, values: np.ndarray, turn: Reorientation, mask_name: str
    ) -> tuple[list[SliceLabel], set[int]]:
        """One label per slice of the training orientation (hemorrhage and subtypes present),
        and the label values the mask holds."""
        checked, present = self._checked_values(values, mask_name)
        labels_volume = turn.apply(checked)
        any_ich = np.any(labels_volume > 0, axis=(0, 1))
        flags = np.zeros((labels_volume.shape[2], len(SUBTYPES)), dtype=np.uint8)
        for value, index in self.subtype_of.items():
            flags[:, index] |= np.any(labels_volume == value, axis=(0, 1))
        labels = [
            SliceLabel(
                patient=patient,
                slice_number=k + 1,
                subtypes=tuple(int(f) for f in flags[k]),
                no_hemorrhage=int(not any_ich[k]),
                fracture=0,
            )
            for k in range(labels_volume.shape[2])
        ]
        return labels, present

    def _check_volume(
        self, patient: int, values: np.ndarray, turn: Reorientation, scan_name: str, mask_name: str
    ) -> None:
        """The mask's values are the label map's, and its slices still carry the labels."""
        found, _ = self._slice_labels(patient, values, turn, mask_name)
        if found != self.labels_for(patient):
            raise IchsegError(
                f"{mask_name}: its slices no longer match the labels read from it when the "
                "release was opened (the file changed); run again"
            )
