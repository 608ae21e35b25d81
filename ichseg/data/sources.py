"""Data sources: the data config's `data.source`, one class per dataset layout.

A source is a frozen dataclass with a `root` (and whatever else it needs), a `name` that ichseg
records in the prepared cache, its key, the provenance and every evaluation, a `title`,
`citation` and `licence` the report quotes, and these methods:
- `release_dir()`: the folder, written first if the source writes it (the phantom);
- `open()`: that folder read and validated as a `VolumeRelease` (cases, per-slice labels,
  label map; volumes are loaded through `VolumeRelease.load_patient`, the shared path);
- `facts(release)`: what the cache and every evaluation record of it (`source_facts`), with
  `record()`, how to make the source again (`source_from_record`).
A layout whose only labels are voxel masks subclasses `MaskSource` and gives `find_cases(root)`
(the scans and masks, in one line refusing a folder of another layout) and, when the masks hold
more than one label, `label_map(root)`. A new source is one such class (here or in any importable
module) plus one `conf/data/<name>.yaml` whose `source._target_` names it; nothing else in ichseg
lists the sources but `LAYOUT_SOURCES`, the readers of the layouts the phantom writes.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ichseg.config_schema import PHANTOM_LAYOUTS
from ichseg.data.mask_release import MaskRelease
from ichseg.data.phantom import PHANTOM_MARKER, check_layout, ensure_phantom
from ichseg.data.release import (
    Case,
    PhysioNetRelease,
    VolumeRelease,
    read_json_object,
)
from ichseg.errors import IchsegError
from ichseg.paths import absolute
from ichseg.scans.nifti import NIFTI_SUFFIXES, nifti_stem


@dataclass(frozen=True)
class Source(ABC):
    """A dataset in one folder layout under `root`."""

    root: str
    name: ClassVar[str]
    title: ClassVar[str]
    citation: ClassVar[str]
    licence: ClassVar[str]

    def __post_init__(self) -> None:
        # The root is recorded (the cache's meta.json, evaluate's summary.json) and read later,
        # from other folders: a relative one is made absolute against the working folder now.
        object.__setattr__(self, "root", absolute(self.root))

    def release_dir(self) -> Path:
        """The folder this source reads (made first if the source makes it)."""
        return Path(self.root).expanduser()

    @abstractmethod
    def open(self) -> VolumeRelease:
        """The folder read and validated: cases, per-slice labels, label map."""

    def open_release(self, allow_non_hu: bool = False) -> VolumeRelease:
        """`open()`, whose volumes are then loaded even if they do not look like CT in HU when
        `allow_non_hu` (`ichseg.scans.hounsfield`); what prepare and evaluate read through."""
        release = self.open()
        release.allow_non_hu = allow_non_hu
        return release

    def facts(self, release: VolumeRelease) -> dict:
        """What the cache, evaluations and reports record of the source (`source_facts`): who it
        is, how to make it again, what its folder holds."""
        root = release.root
        return {
            "name": self.name,
            "title": self.title,
            "citation": self.citation,
            "licence": self.licence,
            "synthetic": (root / PHANTOM_MARKER).is_file(),
            "record": self.record(),
            **release.contents(),
        }

    def record(self) -> dict:
        """How to make this source again (`source_from_record`): its class's import path and its
        fields."""
        cls = type(self)
        return {"target": f"{cls.__module__}.{cls.__qualname__}", **dataclasses.asdict(self)}


@dataclass(frozen=True)
class PhysioNet(Source):
    """A PhysioNet CT-ICH 1.3.1 release downloaded to `root` (restricted data, kept local)."""

    name: ClassVar[str] = "physionet"
    title: ClassVar[str] = "PhysioNet CT-ICH 1.3.1"
    citation: ClassVar[str] = "Hssayeni et al. 2020, doi:10.13026/4nae-zg36"
    licence: ClassVar[str] = "PhysioNet Restricted Health Data License 1.5.0"

    def open(self) -> VolumeRelease:
        """`ct_scans/`, `masks/` and the diagnosis CSV, validated (`ichseg.data.release`)."""
        return PhysioNetRelease.open(self.release_dir(), self.name)


def _entries(root: Path) -> list[str]:
    """A folder's visible entry names (folders with a slash), for messages; refuses a non-folder."""
    if not root.exists():
        raise IchsegError(f"release folder {root} does not exist")
    if not root.is_dir():
        raise IchsegError(f"release folder {root} is not a folder")
    try:
        children = sorted(root.iterdir())
    except OSError as err:
        raise IchsegError(f"{root}: cannot list the folder ({err.strerror})") from None
    return [c.name + ("/" if c.is_dir() else "") for c in children if not c.name.startswith(".")]


def _found(root: Path) -> str:
    names = _entries(root)
    if not names:
        return "an empty folder"
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def nifti_stems(folder: Path, suffix: str = "") -> dict[str, Path]:
    """`{stem: path}` of the `.nii` / `.nii.gz` files in `folder` whose stem ends in `suffix`
    (which is cut off); any other visible file, or a stem found twice, is refused."""
    stems: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        stem = nifti_stem(path.name)
        if stem is None or not path.is_file() or not stem.endswith(suffix):
            raise IchsegError(
                f"{path}: expected only NIfTI files (<case>{suffix}.nii or .nii.gz) in "
                f"{folder.name}/, found {path.name}"
            )
        stem = stem[: len(stem) - len(suffix)]
        if stem in stems:
            raise IchsegError(
                f"{folder}: both {stems[stem].name} and {path.name} exist for case {stem}, keep one"
            )
        stems[stem] = path
    return stems


def pair_cases(scans: dict[str, Path], masks: dict[str, Path], where: Path) -> list[Case]:
    """One case per stem present in both; a scan without mask or mask without scan is refused."""
    for have, lack, kind in ((scans, masks, "mask"), (masks, scans, "scan")):
        missing = sorted(set(have) - set(lack))
        if missing:
            raise IchsegError(
                f"{where}: case {missing[0]} has no {kind} ({len(missing)} case(s) without one); "
                "expected a scan and a mask of the same name for every case"
            )
    return [Case(stem, scans[stem], masks[stem]) for stem in sorted(scans)]


def _first_folder(root: Path, candidates: tuple[tuple[str, ...], ...]) -> tuple[Path, ...] | None:
    """The first candidate whose folders (relative to `root`) all exist."""
    for names in candidates:
        folders = tuple(root / name for name in names)
        if all(folder.is_dir() for folder in folders):
            return folders
    return None


@dataclass(frozen=True)
class MaskSource(Source):
    """A layout whose labels are its masks alone; per-slice labels come from the masks.

    `binary_labels` reads masks of only 0 and 1 (a binary export of a layout whose label map
    names subtypes) as hemorrhage without subtypes; without it such a release is refused
    (`ichseg.data.mask_release`)."""

    binary_labels: bool = False
    # Binary masks unless the layout says otherwise.
    LABEL_MAP: ClassVar[dict[int, str]] = {1: "hemorrhage"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.binary_labels, bool):
            raise IchsegError(
                f"data.source.binary_labels: expected true or false, found {self.binary_labels!r}"
            )

    @abstractmethod
    def find_cases(self, root: Path) -> list[Case]:
        """The scans and masks of `root`; one line naming what was expected and found if the
        folder is not this layout."""

    def label_map(self, root: Path) -> dict[int, str]:
        """Mask value -> name; values > 0 are hemorrhage, and names of subtypes give subtypes."""
        return dict(self.LABEL_MAP)

    def open(self) -> VolumeRelease:
        """The folder's cases, labelled from their masks (`ichseg.data.mask_release`)."""
        root = self.release_dir()
        _entries(root)
        return MaskRelease(
            root,
            self.name,
            self.find_cases(root),
            self.label_map(root),
            binary=self.binary_labels,
            synthetic=(root / PHANTOM_MARKER).is_file(),
        )


@dataclass(frozen=True)
class Instance22(MaskSource):
    """INSTANCE 2022's labelled training set: `train/data/NNN.nii.gz`, `train/label/NNN.nii.gz`."""

    name: ClassVar[str] = "instance22"
    title: ClassVar[str] = "INSTANCE 2022 (MICCAI challenge)"
    citation: ClassVar[str] = (
        "Li et al., arXiv:2301.03281; github PerceptionComputingLab/INSTANCE2022"
    )
    licence: ClassVar[str] = "by agreement with the challenge organisers"
    FOLDERS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("train/data", "train/label"),
        ("data", "label"),
    )

    def find_cases(self, root: Path) -> list[Case]:
        """Scans in `train/data/`, binary masks of the same name in `train/label/` (or `data/`
        and `label/` when `root` is the `train` folder itself)."""
        folders = _first_folder(root, self.FOLDERS)
        if folders is None:
            raise IchsegError(
                f"{root}: not an INSTANCE 2022 folder: expected train/data/ and train/label/ "
                f"(NNN.nii.gz), found {_found(root)}"
            )
        scans, masks = folders
        return pair_cases(nifti_stems(scans), nifti_stems(masks), root)


@dataclass(frozen=True)
class BHSD(MaskSource):
    """BHSD's voxel-labelled set: `label_192/images/` and `label_192/ground truths/`."""

    name: ClassVar[str] = "bhsd"
    title: ClassVar[str] = "BHSD (Brain Hemorrhage Segmentation Dataset)"
    citation: ClassVar[str] = "Wu et al., MLMI 2023, arXiv:2308.11298; github White65534/BHSD"
    licence: ClassVar[str] = "MIT per its README ('AIML' per its dataset.json)"
    # The paper's classes; a dataset.json with labels beside the folders takes precedence.
    LABEL_MAP: ClassVar[dict[int, str]] = {
        1: "epidural",
        2: "intraparenchymal",
        3: "intraventricular",
        4: "subarachnoid",
        5: "subdural",
    }
    FOLDERS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("label_192/images", "label_192/ground truths"),
        ("images", "ground truths"),
    )

    def find_cases(self, root: Path) -> list[Case]:
        """Scans in `images/`, multi-class masks of the same name in `ground truths/` (a space
        in the name), inside `label_192/` or directly under `root`."""
        folders = _first_folder(root, self.FOLDERS)
        if folders is None:
            raise IchsegError(
                f"{root}: not a BHSD folder: expected label_192/images/ and "
                f"label_192/ground truths/ (ID_..._ID_....nii.gz), found {_found(root)}"
            )
        scans, masks = folders
        return pair_cases(nifti_stems(scans), nifti_stems(masks), root)

    def label_map(self, root: Path) -> dict[int, str]:
        """The `dataset.json` labels next to the images, else the paper's five classes."""
        for folder in (root / "label_192", root):
            path = folder / "dataset.json"
            if path.is_file():
                return read_label_map(path)
        return dict(self.LABEL_MAP)


@dataclass(frozen=True)
class NnunetRaw(MaskSource):
    """An nnU-Net v2 raw dataset: `imagesTr/<case>_0000<ending>`, `labelsTr/<case><ending>`,
    `dataset.json` (channel_names, labels, numTraining, file_ending)."""

    name: ClassVar[str] = "nnunet_raw"
    title: ClassVar[str] = "nnU-Net v2 raw dataset"
    citation: ClassVar[str] = "Isensee et al. 2021; MIC-DKFZ/nnUNet documentation/dataset_format.md"
    licence: ClassVar[str] = "as its dataset.json states"

    def _dataset_json(self, root: Path) -> dict:
        path = root / "dataset.json"
        if not (root / "imagesTr").is_dir() or not (root / "labelsTr").is_dir():
            raise IchsegError(
                f"{root}: not an nnU-Net raw dataset: expected imagesTr/, labelsTr/ and "
                f"dataset.json, found {_found(root)}"
            )
        if not path.is_file():
            raise IchsegError(f"{root}: missing dataset.json beside imagesTr/ and labelsTr/")
        data = read_json_object(path)
        channels = data.get("channel_names", data.get("modality"))
        if not isinstance(channels, dict) or len(channels) != 1:
            raise IchsegError(
                f"{path}: expected one input channel (CT) in channel_names, found {channels!r}"
            )
        return data

    def find_cases(self, root: Path) -> list[Case]:
        """Every case of `imagesTr/` (channel `_0000`) with its `labelsTr/` mask."""
        data = self._dataset_json(root)
        ending = str(data.get("file_ending", ".nii.gz"))
        if ending.lower() not in NIFTI_SUFFIXES:
            raise IchsegError(
                f"{root / 'dataset.json'}: file_ending {ending!r}: expected .nii.gz or .nii"
            )
        cases = pair_cases(
            nifti_stems(root / "imagesTr", "_0000"), nifti_stems(root / "labelsTr"), root
        )
        expected = data.get("numTraining")
        if isinstance(expected, int) and expected != len(cases):
            raise IchsegError(
                f"{root / 'dataset.json'}: numTraining is {expected}, but imagesTr/ and labelsTr/ "
                f"hold {len(cases)} cases"
            )
        return cases

    def label_map(self, root: Path) -> dict[int, str]:
        """dataset.json's `labels`."""
        self._dataset_json(root)
        return read_label_map(root / "dataset.json")


def read_label_map(path: Path) -> dict[int, str]:
    """A dataset.json's `labels` as {value: name}: nnU-Net v2 writes {name: value}, v1 (and
    BHSD) {"value": name}; region labels (lists of values) are refused."""
    labels = read_json_object(path).get("labels")
    if not isinstance(labels, dict) or not labels:
        raise IchsegError(f"{path}: expected a 'labels' object, found {labels!r}")
    out: dict[int, str] = {}
    for key, value in labels.items():
        if str(key).isdigit():
            number, name = int(key), str(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number, name = value, str(key)
        else:
            raise IchsegError(
                f"{path}: label {key!r} is {value!r}: expected one integer per label "
                "(region-based labels are not supported)"
            )
        out[number] = name
    return {number: name for number, name in sorted(out.items()) if number != 0}


@dataclass(frozen=True)
class Phantom(Source):
    """The built-in synthetic release in any `layout`, written under `root` on first use."""

    patients: int = 75
    size: int = 512
    seed: int = 0
    layout: str = "physionet"
    name: ClassVar[str] = "phantom"
    title: ClassVar[str] = "synthetic phantom (not patient data)"
    citation: ClassVar[str] = "ichseg.data.phantom"
    licence: ClassVar[str] = "synthetic, no restrictions"

    def release_dir(self) -> Path:
        """`root`, holding this phantom (written now if it does not exist yet)."""
        return ensure_phantom(Path(self.root), self.patients, self.size, self.seed, self.layout)

    def open(self) -> VolumeRelease:
        """The phantom read by the source class of its layout, recorded as the phantom."""
        layout = layout_source(self.layout)
        release = self.release_dir()
        if issubclass(layout, MaskSource):
            found = layout(str(release))
            return MaskRelease(
                release,
                self.name,
                found.find_cases(release),
                found.label_map(release),
                synthetic=True,
            )
        return PhysioNetRelease.open(release, self.name)

    def facts(self, release: VolumeRelease) -> dict:
        """The source's facts and the layout it was written in."""
        return {**super().facts(release), "layout": self.layout}


# The source class that reads each layout the phantom writes (`PHANTOM_LAYOUTS`).
LAYOUT_SOURCES: dict[str, type[Source]] = {
    cls.name: cls for cls in (PhysioNet, Instance22, BHSD, NnunetRaw) if cls.name in PHANTOM_LAYOUTS
}


def layout_source(layout: str) -> type[Source]:
    """The source class that reads a phantom written in `layout`."""
    check_layout(layout)
    return LAYOUT_SOURCES[layout]


def _source_class(target: str, where: str) -> type[Source]:
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except ImportError as err:
        raise IchsegError(f"{where}: cannot import {target} ({err})") from None
    except AttributeError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise IchsegError(f"{where}: {target} is not a data source class (ichseg.data.sources)")
    return cls


def source_from_record(record: dict, where: str, root: str | None = None) -> Source:
    """The source a `Source.record()` describes (at `root` instead of its own, when given)."""
    if not isinstance(record, dict) or "target" not in record:
        raise IchsegError(f"{where}: expected a data source record with a target, found {record!r}")
    params = {k: v for k, v in record.items() if k != "target"}
    if root is not None:
        params["root"] = str(root)
    cls = _source_class(str(record["target"]), where)
    try:
        return cls(**params)
    except TypeError as err:
        raise IchsegError(f"{where}: cannot make {record['target']} ({err})") from None


def source_named(
    name: str, root: str | Path, binary_labels: bool = False, where: str | None = None
) -> Source:
    """The source `conf/data/<name>.yaml` configures (or the class at a dotted import path), at
    `root`, reading binary masks without subtypes when `binary_labels`; this is how
    `ichseg prepare --source` and `ichseg evaluate --source` find one (`where` names the option
    in errors: `--source NAME` unless given)."""
    where = where or f"--source {name}"
    source = _named(name, root, where)
    if not binary_labels:
        return source
    if not isinstance(source, MaskSource):
        raise IchsegError(
            f"--binary-labels: {where} takes no such setting (it applies to sources labelled "
            "by multi-class masks, e.g. bhsd and nnunet_raw)"
        )
    return dataclasses.replace(source, binary_labels=True)


def _named(name: str, root: str | Path, where: str) -> Source:
    """The source `name` names (a conf/data file or an import path) at `root`."""
    if "." in name:
        return source_from_record({"target": name}, where, str(root))
    from omegaconf import OmegaConf

    from ichseg.config import project_root

    folder = project_root() / "conf" / "data"
    path = folder / f"{name}.yaml"
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    if not path.is_file():
        raise IchsegError(
            f"{where}: no {path}; expected one of {', '.join(known)} or a class's import path"
        )
    target = OmegaConf.select(OmegaConf.load(path), "source._target_")
    if not isinstance(target, str):
        raise IchsegError(f"{where}: {path} has no source._target_")
    return source_from_record({"target": target}, where, str(root))
