"""Release folders: the shared volume loading every data source reads through, and PhysioNet's.

`VolumeRelease` is a validated folder of any source (`ichseg.data.sources`): its cases (patient
number -> scan and mask file), per-slice labels, label map and facts, and `load_patient`, the one
path every scan and mask is read by (nibabel's scaling, shape and affine agreement, finite
voxels, the training orientation of `ichseg.scans.orientation`, a scan's size and Hounsfield units
of `ichseg.scans.hounsfield`).

`PhysioNetRelease` is PhysioNet CT-ICH 1.3.1's layout (real or the synthetic phantom):
`ct_scans/NNN.nii` and `masks/NNN.nii` (or `.nii.gz`), `hemorrhage_diagnosis_raw_ct.csv` and
`Patient_demographics.csv`; folder and file names are matched case-insensitively because copies
of the release differ in capitalisation. Every inconsistency is an `IchsegError` with a one-line
message naming the file, patient and slice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichseg.errors import IchsegError
from ichseg.scans.hounsfield import check_ct_size, check_finite, check_hounsfield
from ichseg.scans.nifti import NIFTI_SUFFIXES, load_nifti, nifti_stem, read_nifti
from ichseg.scans.orientation import Reorientation, reorientation

SUBTYPES = ("Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural")
CSV_NAME = "hemorrhage_diagnosis_raw_ct.csv"
LABEL_CSV_COLUMNS = ("PatientNumber", "SliceNumber", *SUBTYPES, "No_Hemorrhage", "Fracture_Yes_No")
DEMOGRAPHICS_NAME = "patient_demographics.csv"
SCAN_DIR = "ct_scans"
MASK_DIR = "masks"

# Masks and scans written by different tools differ by float rounding in the affine only.
_AFFINE_ATOL = 1e-3
_AFFINE_RTOL = 1e-4


def slice_id(patient: int, slice_number: int) -> str:
    """The project-wide slice id `PPP_SS` (patient number, 1-based slice number)."""
    return f"{patient:03d}_{slice_number:02d}"


@dataclass(frozen=True)
class SliceLabel:
    """One row of the diagnosis CSV; `slice_number` is 1-based (volume index + 1)."""

    patient: int
    slice_number: int
    subtypes: tuple[int, ...]
    no_hemorrhage: int
    fracture: int

    @property
    def slice_id(self) -> str:
        """The slice id `PPP_SS`."""
        return slice_id(self.patient, self.slice_number)

    @property
    def has_ich(self) -> bool:
        """Whether the CSV marks this slice as showing hemorrhage."""
        return self.no_hemorrhage == 0


@dataclass(frozen=True)
class PatientVolume:
    """A validated scan in Hounsfield units and its binary mask, both (H, W, N) in the training
    orientation (`ichseg.scans.orientation`), with the voxel sizes and affine of that array."""

    patient: int
    hu: np.ndarray
    mask: np.ndarray
    zooms: tuple[float, float, float]
    affine: np.ndarray

    def fingerprint(self) -> dict:
        """Content hashes that recognise this volume in any folder, file format, layout or axis
        order: `shape` (training orientation), `scan` (sha256 of the voxels rounded to whole HU)
        and `mask` (sha256 of the bleed voxels; None for an empty mask, which tells no volume
        from another of its shape)."""
        shape = json.dumps(list(self.hu.shape)).encode()
        scan = hashlib.sha256(shape)
        scan.update(np.ascontiguousarray(np.rint(self.hu), dtype="<i4"))
        mask = None
        if self.mask.any():
            mask = hashlib.sha256(shape)
            mask.update(np.packbits(self.mask, axis=None))
        return {
            "shape": list(self.hu.shape),
            "scan": scan.hexdigest(),
            "mask": None if mask is None else mask.hexdigest(),
        }


def _children_by_lower_name(folder: Path) -> dict[str, Path]:
    """Map lower-cased entry names of `folder` to their paths (case-insensitive lookup)."""
    try:
        return {child.name.lower(): child for child in folder.iterdir()}
    except OSError as err:
        raise IchsegError(f"{folder}: cannot list the folder ({err.strerror})") from None


def _parse_cell(text: str, where: str, column: str, binary: bool) -> int:
    """Parse one CSV cell as an integer (0/1 when `binary`), or raise naming file, line, column."""
    value = text.strip()
    try:
        number = int(value)
    except ValueError:
        raise IchsegError(f"{where}: column {column} must be an integer, found {value!r}") from None
    if binary and number not in (0, 1):
        raise IchsegError(f"{where}: column {column} must be 0 or 1, found {value!r}")
    if not binary and number < 1:
        raise IchsegError(f"{where}: column {column} must be a positive integer, found {value!r}")
    return number


def _parse_row(row: dict[str, str], where: str) -> SliceLabel:
    """Turn one CSV record into a `SliceLabel`, checking every cell and No_Hemorrhage."""
    cells = {
        col: _parse_cell(row[col] or "", where, col, col not in LABEL_CSV_COLUMNS[:2])
        for col in LABEL_CSV_COLUMNS
    }
    subtypes = tuple(cells[name] for name in SUBTYPES)
    # A subtype on a slice marked clean contradicts itself; which fact is wrong is unknowable.
    # The reverse (hemorrhage without a subtype) is kept: the mask, not the subtype, is the label.
    if cells["No_Hemorrhage"] == 1 and any(subtypes):
        marked = ", ".join(name for name, flag in zip(SUBTYPES, subtypes, strict=True) if flag)
        raise IchsegError(f"{where}: No_Hemorrhage=1 but subtype {marked}=1")
    return SliceLabel(
        patient=cells["PatientNumber"],
        slice_number=cells["SliceNumber"],
        subtypes=subtypes,
        no_hemorrhage=cells["No_Hemorrhage"],
        fracture=cells["Fracture_Yes_No"],
    )


def parse_labels(text: str, name: str = CSV_NAME) -> list[SliceLabel]:
    """Parse and validate the diagnosis CSV text; rows come back sorted by patient, slice."""
    reader = csv.DictReader(io.StringIO(text))
    header = [column.strip() for column in (reader.fieldnames or [])]
    if not header:
        raise IchsegError(f"{name}: file is empty, expected header {','.join(LABEL_CSV_COLUMNS)}")
    reader.fieldnames = header
    missing = [column for column in LABEL_CSV_COLUMNS if column not in header]
    if missing:
        raise IchsegError(
            f"{name}: missing column(s) {', '.join(missing)}; found {', '.join(header)}"
        )
    labels = []
    for row in reader:
        if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
            continue
        labels.append(_parse_row(row, f"{name} line {reader.line_num}"))
    if not labels:
        raise IchsegError(f"{name}: no data rows below the header")
    labels.sort(key=lambda label: (label.patient, label.slice_number))
    _check_slice_numbers(labels, name)
    return labels


def _check_slice_numbers(labels: list[SliceLabel], name: str) -> None:
    """Each patient must have exactly one row per slice 1..n (labels sorted)."""
    by_patient: dict[int, list[int]] = {}
    for label in labels:
        by_patient.setdefault(label.patient, []).append(label.slice_number)
    for patient, numbers in by_patient.items():
        seen: set[int] = set()
        for number in numbers:
            if number in seen:
                raise IchsegError(f"{name}: duplicate row for patient {patient} slice {number}")
            seen.add(number)
        if numbers[-1] != len(numbers):
            gaps = sorted(set(range(1, numbers[-1] + 1)) - seen)
            raise IchsegError(
                f"{name}: patient {patient} slice numbers must be 1..{len(numbers)}, "
                f"found {len(numbers)} rows up to {numbers[-1]} (missing {gaps[:5]})"
            )


def _find_volume(folder: Path | None, patient: int) -> Path | None:
    """The scan or mask file of `patient` in `folder` (`NNN.nii` or `NNN.nii.gz`), if any."""
    if folder is None:
        return None
    entries = _children_by_lower_name(folder)
    found = [
        entries[f"{patient:03d}{suffix}"]
        for suffix in NIFTI_SUFFIXES
        if f"{patient:03d}{suffix}" in entries
    ]
    if len(found) > 1:
        raise IchsegError(
            f"{folder}: both {found[0].name} and {found[1].name} exist for patient {patient}, "
            "keep one"
        )
    return found[0] if found else None


@dataclass(frozen=True)
class Case:
    """One volume of a release: its name in the source's own terms and its two files."""

    name: str
    scan: Path
    mask: Path


class VolumeRelease:
    """A validated release folder of any source: cases, per-slice labels, shared volume loading.

    Subclasses give the per-slice labels (`labels`) and may check a loaded volume against them
    (`_check_volume`). Patients are numbered by the source (PhysioNet's own numbers; 1..n in
    case-name order elsewhere), and `case_name` says what the source calls each one.
    """

    def __init__(
        self,
        root: Path,
        source: str,
        cases: dict[int, Case],
        labels_sha256: str,
        label_map: dict[int, str],
        subtypes_from: str | None,
    ) -> None:
        """`labels_sha256` pins what the slice labels come from; `label_map` maps mask values to
        names; `subtypes_from` says where per-slice subtypes come from (None: no subtypes)."""
        self.root = root
        self.source = source
        self.cases = cases
        self.patients = sorted(cases)
        self.labels_sha256 = labels_sha256
        self.label_map = label_map
        self.subtypes_from = subtypes_from
        # Set by `Source.open_release`: scans that fail the HU rule are read anyway.
        self.allow_non_hu = False
        self._by_patient: dict[int, list[SliceLabel]] | None = None

    @property
    def labels(self) -> list[SliceLabel]:
        """Every slice's label, sorted by patient and slice (slices of the training orientation)."""
        raise NotImplementedError

    def _check_patient(self, patient: int) -> None:
        """Raise unless `patient` is one of the release's patients."""
        if patient not in self.cases:
            raise IchsegError(
                f"patient {patient} is not in {self.root} "
                f"(patients {self.patients[0]}..{self.patients[-1]})"
            )

    def labels_for(self, patient: int) -> list[SliceLabel]:
        """The labels of one patient's slices, ordered by slice number."""
        self._check_patient(patient)
        if self._by_patient is None:
            self._by_patient = {}
            for label in self.labels:
                self._by_patient.setdefault(label.patient, []).append(label)
        return self._by_patient[patient]

    def case_name(self, patient: int) -> str:
        """What the source calls this patient's volume (its file name without suffix)."""
        self._check_patient(patient)
        return self.cases[patient].name

    def scan_path(self, patient: int) -> Path:
        """Path of the patient's CT scan file."""
        self._check_patient(patient)
        return self.cases[patient].scan

    def mask_path(self, patient: int) -> Path:
        """Path of the patient's mask file."""
        self._check_patient(patient)
        return self.cases[patient].mask

    def _relative(self, path: Path) -> str:
        """`path` relative to the release root, for short messages."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def load_patient(self, patient: int) -> PatientVolume:
        """Read scan and mask of one patient, check them against each other (and the labels),
        bring both to the training orientation and check the scan is CT in HU of a plausible
        size (`ichseg.scans.hounsfield`); the one loading path of every source."""
        scan_name = self._relative(self.scan_path(patient))
        mask_name = self._relative(self.mask_path(patient))
        hu, affine, zooms = load_nifti(self.scan_path(patient), scan_name)
        values, mask_affine, _ = load_nifti(self.mask_path(patient), mask_name)
        if values.shape != hu.shape:
            raise IchsegError(
                f"{mask_name}: shape {values.shape} differs from {scan_name} shape {hu.shape}"
            )
        if not np.allclose(mask_affine, affine, rtol=_AFFINE_RTOL, atol=_AFFINE_ATOL):
            raise IchsegError(
                f"{mask_name}: affine differs from {scan_name} "
                f"(max difference {np.abs(mask_affine - affine).max():.4g})"
            )
        check_finite(hu, scan_name, f" (patient {patient})")
        turn = reorientation(affine, scan_name)
        self._check_volume(patient, values, turn, scan_name, mask_name)
        hu = turn.apply(hu)
        where = f"{scan_name} (patient {patient})"
        check_ct_size(hu.shape, where)
        check_hounsfield(hu, where, self.allow_non_hu)
        return PatientVolume(
            patient=patient,
            hu=hu,
            mask=turn.apply(values > 0),
            zooms=turn.zooms(zooms),
            affine=turn.affine(affine, hu.shape),
        )

    def _check_volume(
        self, patient: int, values: np.ndarray, turn: Reorientation, scan_name: str, mask_name: str
    ) -> None:
        """Check a patient's mask values (as stored) against the release's labels."""
        raise NotImplementedError

    def header_geometry(self, patient: int) -> tuple[tuple[int, int, int], tuple[float, ...]]:
        """The scan's shape and voxel sizes in the training orientation, from its header alone."""
        path = self.scan_path(patient)
        name = self._relative(path)
        image, zooms = read_nifti(path, name)
        turn = reorientation(image.affine, name)
        shape = turn.zooms(tuple(float(n) for n in image.shape[:3]))
        return (int(shape[0]), int(shape[1]), int(shape[2])), turn.zooms(zooms)

    def contents(self) -> dict:
        """What the report's provenance says of this release, from the volumes' headers: volumes,
        slices (along the axial axis), voxel spacing and in-plane size ranges, label map."""
        spacings, sizes, slices = [], [], 0
        for patient in self.patients:
            shape, zooms = self.header_geometry(patient)
            spacings.append(zooms)
            sizes.append(shape[:2])
            slices += shape[2]
        spacing = np.asarray(spacings, dtype=float)
        size = np.asarray(sizes, dtype=int)
        return {
            "volumes": len(self.patients),
            "slices": slices,
            "spacing_mm_min": [round(float(v), 4) for v in spacing.min(axis=0)],
            "spacing_mm_max": [round(float(v), 4) for v in spacing.max(axis=0)],
            "in_plane_min": [int(v) for v in size.min(axis=0)],
            "in_plane_max": [int(v) for v in size.max(axis=0)],
            "label_map": {str(k): v for k, v in sorted(self.label_map.items())},
            "subtypes_from": self.subtypes_from,
            "labels_sha256": self.labels_sha256,
        }


def _check_no_unlisted_volumes(
    folder: Path | None, listed: dict[int, Path], csv_path: Path
) -> None:
    """A volume whose patient has no CSV rows means the CSV lost that patient: refuse it."""
    if folder is None or not folder.is_dir():
        return
    for name, path in sorted(_children_by_lower_name(folder).items()):
        stem = nifti_stem(name) or ""
        if stem.isdigit() and int(stem) not in listed:
            raise IchsegError(
                f"{csv_path.name} has no rows for patient {int(stem)}, but {path} exists; "
                "expected one row per slice of every scan"
            )


class PhysioNetRelease(VolumeRelease):
    """A PhysioNet CT-ICH 1.3.1 release folder: the CSV labels and each patient's scan and mask.

    Patients keep the CSV's numbers; the slice labels are the CSV's rows, which number the slices
    of the stored last axis, so a volume whose affine makes another axis axial is refused.
    """

    def __init__(
        self,
        root: Path,
        labels: list[SliceLabel],
        csv_path: Path,
        csv_sha256: str,
        cases: dict[int, Case],
        source: str = "physionet",
    ) -> None:
        """Use `PhysioNetRelease.open(root)`; this stores already validated parts."""
        label_map = {1: "hemorrhage"}
        super().__init__(root, source, cases, csv_sha256, label_map, CSV_NAME)
        self._labels = labels
        self.csv_path = csv_path

    @property
    def labels(self) -> list[SliceLabel]:
        """The CSV's rows, sorted by patient and slice."""
        return self._labels

    @classmethod
    def open(cls, root: str | Path, source: str = "physionet") -> PhysioNetRelease:
        """Validate the folder and CSV and locate every CSV patient's scan and mask."""
        root = Path(root).expanduser()
        if not root.exists():
            raise IchsegError(f"release folder {root} does not exist")
        if not root.is_dir():
            raise IchsegError(f"release folder {root} is not a folder")
        entries = _children_by_lower_name(root)
        if not entries:
            raise IchsegError(
                f"release folder {root} is empty, expected {SCAN_DIR}/, {MASK_DIR}/ and {CSV_NAME}"
            )
        csv_path = entries.get(CSV_NAME)
        if csv_path is None or not csv_path.is_file():
            found = ", ".join(sorted(child.name for child in entries.values())[:6])
            raise IchsegError(
                f"{root}: missing {CSV_NAME}: expected the PhysioNet CT-ICH layout ({CSV_NAME}, "
                f"{SCAN_DIR}/, {MASK_DIR}/), found {found}"
            )
        try:
            raw = csv_path.read_bytes()
        except OSError as err:
            raise IchsegError(f"{csv_path}: cannot read the file ({err.strerror})") from None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise IchsegError(
                f"{csv_path}: not UTF-8 text ({err.reason} at byte {err.start})"
            ) from None
        labels = parse_labels(text, str(csv_path))
        folders = {name: entries.get(name) for name in (SCAN_DIR, MASK_DIR)}
        found: dict[str, dict[int, Path]] = {SCAN_DIR: {}, MASK_DIR: {}}
        for patient in sorted({label.patient for label in labels}):
            for name, folder in folders.items():
                path = _find_volume(folder if folder and folder.is_dir() else None, patient)
                if path is None:
                    kind = "scan" if name == SCAN_DIR else "mask"
                    raise IchsegError(
                        f"patient {patient} is in {csv_path.name} but has no {kind}: "
                        f"expected {root / name / f'{patient:03d}.nii'} (or .nii.gz)"
                    )
                found[name][patient] = path
        for folder in folders.values():
            _check_no_unlisted_volumes(folder, found[SCAN_DIR], csv_path)
        cases = {
            patient: Case(f"{patient:03d}", scan, found[MASK_DIR][patient])
            for patient, scan in found[SCAN_DIR].items()
        }
        return cls(root, labels, csv_path, hashlib.sha256(raw).hexdigest(), cases, source)

    def _check_volume(
        self, patient: int, values: np.ndarray, turn: Reorientation, scan_name: str, mask_name: str
    ) -> None:
        """The CSV's slice count and hemorrhage flags, on the stored last axis, which must be the
        axial one."""
        labels = self.labels_for(patient)
        if values.shape[2] != len(labels):
            raise IchsegError(
                f"{scan_name}: {self.csv_path.name} lists {len(labels)} slices for patient "
                f"{patient}, the volume has {values.shape[2]} (shape {values.shape})"
            )
        self._check_mask_against_csv(values > 0, labels, mask_name)
        if turn.axial_axis != 2:
            raise IchsegError(
                f"{scan_name}: the affine makes array axis {turn.axial_axis} the axial one, but "
                f"{self.csv_path.name} numbers the slices of the last axis; expected the axial "
                "axis last, as the release stores it"
            )

    def _check_mask_against_csv(
        self, mask: np.ndarray, labels: list[SliceLabel], mask_name: str
    ) -> None:
        """A slice's mask is non-empty exactly when the CSV says it shows hemorrhage."""
        counts = np.count_nonzero(mask, axis=(0, 1))
        for label, count in zip(labels, counts, strict=True):
            if count and not label.has_ich:
                raise IchsegError(
                    f"{mask_name}: slice {label.slice_number} has {count} mask voxels but "
                    f"{self.csv_path.name} says No_Hemorrhage=1 (patient {label.patient})"
                )
            if not count and label.has_ich:
                raise IchsegError(
                    f"{mask_name}: slice {label.slice_number} has an empty mask but "
                    f"{self.csv_path.name} says No_Hemorrhage=0 (patient {label.patient})"
                )

    def read_demographics(self) -> list[dict[str, str]]:
        """Rows of Patient_demographics.csv keyed by combined header names; [] if it is absent.

        The file is metadata only, so its absence is not an error. Its two-row merged header is
        joined into one name per column ("group sub"), and only rows whose first cell is a patient
        number are kept (the footer of totals is dropped).
        """
        path = _children_by_lower_name(self.root).get(DEMOGRAPHICS_NAME)
        if path is None or not path.is_file():
            return []
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # spreadsheet exports; any byte decodes
        return parse_demographics(text)


def _is_patient_number(cell: str) -> bool:
    """Whether a first cell holds a patient number (data row) rather than a title or total."""
    return cell.strip().isdigit()


def _header_names(header_rows: list[list[str]], width: int) -> list[str]:
    """Combine stacked header rows into one unique name per column.

    A group title spans the columns to its right (a merged cell) only when it sits above a
    sub-column name; a title over an empty sub-cell is a column of its own.
    """
    # Spreadsheet titles may wrap onto several lines inside one cell ("Age\n(years)").
    rows = [
        [" ".join(cell.split()) for cell in row] + [""] * (width - len(row)) for row in header_rows
    ]
    *groups, last = rows
    names: list[str] = []
    for column in range(width):
        parts = [*(_spanning_title(group, last, column) for group in groups), last[column]]
        name = " ".join(dict.fromkeys(part for part in parts if part)) or f"column_{column + 1}"
        names.append(name)
    return _unique(names)


def _spanning_title(group: list[str], sub: list[str], column: int) -> str:
    """The group title covering `column`: its own cell, or a merged title from the left."""
    if group[column]:
        return group[column]
    for left in range(column - 1, -1, -1):
        if group[left]:
            return group[left] if sub[left] and sub[column] else ""
    return ""


def _unique(names: list[str]) -> list[str]:
    """Suffix repeated names with `_2`, `_3`, ... so every column keeps its own key."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def parse_demographics(text: str) -> list[dict[str, str]]:
    """Parse demographics CSV text: header rows until the first patient row, footer dropped."""
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    first = next((i for i, row in enumerate(rows) if row and _is_patient_number(row[0])), None)
    if first is None:
        return []
    width = max(len(row) for row in rows)
    names = _header_names(rows[:first] or [[]], width)
    records = []
    for row in rows[first:]:
        if not (row and _is_patient_number(row[0])):
            continue
        cells = [cell.strip() for cell in row] + [""] * (width - len(row))
        records.append(dict(zip(names, cells, strict=True)))
    return records


def read_json_object(path: Path) -> dict:
    """A file holding one JSON object (a cache's splits.json or meta.json, a dataset.json);
    one line naming the file if it is unreadable or holds anything else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise IchsegError(f"{path}: expected JSON, found unreadable data ({err})") from None
    if not isinstance(data, dict):
        raise IchsegError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
