"""Build (once) and load the prepared cache: the balanced, windowed, resized slice set + splits.

The cache lives in `out_root/<key>`, where the key hashes everything the arrays depend on (the
data source's name, what its labels come from, its volume files, every setting), so a change of
source, release, size, window, seed or split mode lands in a new folder instead of silently
reusing a stale one. The source is any `ichseg.data.sources.Source`; its name and facts are
recorded in meta.json (`source`, `source_facts`) for the datamodule, provenance and reports, with
what recognises the release elsewhere: its absolute folder (`release_root`), the hash of what its
labels come from (`labels_sha256`) and every volume's content hashes (`volume_sha256`,
`PatientVolume.fingerprint`), so that no external validation scores the training volumes.
Every job of a sweep calls `prepare`; one builds under a lock, the others
wait and reuse the folder.

A slice is a positive when its resized mask holds a bleed pixel: the resized mask is the truth a
network is trained and scored on. A slice labelled hemorrhage whose bleed the resize empties
(a bleed of a pixel or two at the release's size) is left out of the balanced set, with as many
of the drawn clean slices, and counted in meta.json (`lost_to_resize`, `LOST_TO_RESIZE_RULE`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ichseg.atomic import atomic_path, file_lock
from ichseg.config_schema import check_section
from ichseg.data.release import SUBTYPES, SliceLabel, VolumeRelease, read_json_object, slice_id
from ichseg.data.sources import PhysioNet, Source
from ichseg.data.splits import make_splits
from ichseg.data.transforms import prepared_slices, resize_masks, to_slices
from ichseg.errors import IchsegError
from ichseg.paths import absolute

# Bump whenever the arrays or files written for the same inputs change. 3: slices labelled
# hemorrhage whose resized mask is empty are left out of the balanced set.
CACHE_VERSION = 3
CACHE_FILES = ("images.npy", "masks.npy", "index.csv", "splits.json", "meta.json")
INDEX_COLUMNS = ("row", "slice_id", "patient", "slice", "has_ich", *SUBTYPES, "fracture")
# What happens to a slice labelled hemorrhage with no bleed pixel left at the cache's size, and why.
LOST_TO_RESIZE_RULE = (
    "left out of the balanced set, with as many drawn clean slices: labelled hemorrhage, but "
    "its resized mask holds no bleed pixel, so it is neither a positive (its target would be "
    "empty) nor a clean slice (its CT shows blood)"
)
# How many of their slice ids the prepare warning names.
WARN_IDS = 5


@dataclass(frozen=True)
class PrepareConfig:
    """Everything the prepared arrays depend on besides the release itself; each field is
    checked by the config schema's rule of its `data.*` key, with the line train.py gives."""

    size: int = 256
    level: float = 40.0
    width: float = 120.0
    split: str = "slice"
    seed: int = 0
    n_folds: int = 10
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_section(
            "data",
            {
                "size": self.size,
                "window_level": self.level,
                "window_width": self.width,
                "split": self.split,
                "seed": self.seed,
                "n_folds": self.n_folds,
                "test_fraction": self.test_fraction,
            },
        )
        # Plain Python numbers: 40 and 40.0 (or numpy ints) must give the same cache key.
        for key in ("size", "seed", "n_folds"):
            object.__setattr__(self, key, int(getattr(self, key)))
        for key in ("level", "width", "test_fraction"):
            object.__setattr__(self, key, float(getattr(self, key)))


@dataclass
class PreparedData:
    """The cache in memory: arrays in row order plus the index columns, splits and provenance."""

    images: np.ndarray
    masks: np.ndarray
    ids: list[str]
    patients: np.ndarray
    has_ich: np.ndarray
    subtypes: np.ndarray
    splits: dict
    meta: dict


def cache_key(release: VolumeRelease, cfg: PrepareConfig) -> str:
    """Short sha256 of the source's name, what its labels come from, the volume files' sizes,
    every config field and the cache version (and of `allow_non_hu` when set: a cache of
    unchecked volumes is never reused by a checked run)."""
    # The labels alone do not pin the volumes (a phantom written at another size can share its
    # labels); file sizes are a free stat that tells those apart.
    files = {
        release.case_name(p): [
            release.scan_path(p).stat().st_size,
            release.mask_path(p).stat().st_size,
        ]
        for p in release.patients
    }
    payload = {
        "source": release.source,
        "labels_sha256": release.labels_sha256,
        "volume_bytes": files,
        "cfg": dataclasses.asdict(cfg),
        "cache_version": CACHE_VERSION,
    }
    if release.allow_non_hu:
        payload["allow_non_hu"] = True
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def as_source(source: Source | str | Path) -> Source:
    """`source` itself, or a folder path read as a PhysioNet CT-ICH release."""
    return source if isinstance(source, Source) else PhysioNet(str(source))


def prepare(
    source: Source | str | Path,
    out_root: str | Path,
    cfg: PrepareConfig,
    allow_non_hu: bool = False,
) -> Path:
    """Return `out_root/<key>`, building the cache there first unless a complete one exists;
    `allow_non_hu` reads scans that do not look like CT in HU (`ichseg.scans.hounsfield`)."""
    source = as_source(source)
    release = source.open_release(allow_non_hu)
    key = cache_key(release, cfg)
    # Absolute: the path is recorded in every job's job.json and read from anywhere later.
    out_root = Path(absolute(out_root))
    cache = out_root / key
    if (cache / "meta.json").is_file():
        return cache
    with file_lock(out_root / f".{key}.lock", remove_on_failure=True):
        # Another process may have finished the build while this one waited for the lock.
        if not (cache / "meta.json").is_file():
            with atomic_path(cache, is_dir=True, owned_by=("meta.json",)) as tmp:
                _build(source, release, cfg, tmp)
    return cache


def _candidates(release: VolumeRelease, seed: int) -> tuple[list[SliceLabel], list[SliceLabel]]:
    """Every slice labelled hemorrhage (sorted by slice) and as many clean slices drawn with
    `seed`, in the order drawn: any prefix of them is a random draw of its own length."""
    labels = sorted(release.labels, key=_by_slice)
    ich = [lab for lab in labels if lab.has_ich]
    clean = [lab for lab in labels if not lab.has_ich]
    where = f"{release.root} ({release.source})"
    if not ich:
        raise IchsegError(f"{where}: expected hemorrhage slices to balance, found none")
    if len(clean) < len(ich):
        raise IchsegError(
            f"{where}: expected at least as many clean slices as hemorrhage slices "
            f"({len(ich)}) to draw a balanced set, found {len(clean)}"
        )
    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(clean), size=len(ich), replace=False)
    return ich, [clean[i] for i in drawn]


def _by_slice(label: SliceLabel) -> tuple[int, int]:
    return label.patient, label.slice_number


def _splits(chosen: list[SliceLabel], cfg: PrepareConfig) -> dict:
    return make_splits(
        [lab.slice_id for lab in chosen],
        np.array([lab.has_ich for lab in chosen], dtype=bool),
        np.array([lab.patient for lab in chosen], dtype=np.int64),
        cfg.split,
        cfg.seed,
        cfg.n_folds,
        cfg.test_fraction,
    )


def _build(source: Source, release: VolumeRelease, cfg: PrepareConfig, dest: Path) -> None:
    """Write the five cache files into `dest`, `meta.json` last."""
    start = time.perf_counter()
    ich, clean = _candidates(release, cfg.seed)
    candidates = sorted(ich + clean, key=_by_slice)
    # Splits first: a config the labels cannot satisfy fails before minutes of volume reading.
    splits = _splits(candidates, cfg)
    images, masks, fingerprints = _read_slices(release, candidates, cfg)
    chosen, lost = candidates, _lost_to_resize(candidates, masks)
    if lost:
        chosen = _without_lost(release, ich, clean, lost, cfg.size)
        row = {lab.slice_id: r for r, lab in enumerate(candidates)}
        keep = [row[lab.slice_id] for lab in chosen]
        images, masks = images[keep], masks[keep]
        try:
            splits = _splits(chosen, cfg)
        except IchsegError as err:
            raise IchsegError(
                f"{err}, once the {len(lost)} slices labelled hemorrhage with no bleed pixel "
                f"left at {cfg.size} px are left out"
            ) from None

    np.save(dest / "images.npy", images)
    np.save(dest / "masks.npy", masks)
    _write_index(dest / "index.csv", chosen)
    (dest / "splits.json").write_text(json.dumps(splits, indent=1) + "\n", encoding="utf-8")
    meta = {
        "cfg": dataclasses.asdict(cfg),
        "cache_version": CACHE_VERSION,
        "labels_sha256": release.labels_sha256,
        "release_root": str(Path(release.root).resolve()),
        "source": release.source,
        "source_facts": source.facts(release),
        "cases": {str(p): release.case_name(p) for p in release.patients},
        "volume_sha256": fingerprints,
        "allow_non_hu": release.allow_non_hu,
        "counts": _counts(chosen, release, lost),
        "lost_to_resize": _lost_summary(lost, cfg.size),
        "build_seconds": round(time.perf_counter() - start, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (dest / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def _read_slices(
    release: VolumeRelease, chosen: list[SliceLabel], cfg: PrepareConfig
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The chosen slices' images and resized masks in their order, and every volume's
    fingerprint."""
    n, size = len(chosen), cfg.size
    images = np.empty((n, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    rows = {lab.slice_id: row for row, lab in enumerate(chosen)}
    fingerprints = {}
    for patient in release.patients:
        # Every patient is loaded, not only those with chosen slices: loading validates the
        # volume against the CSV, and a broken release should fail here, not at prediction.
        volume = release.load_patient(patient)
        fingerprints[release.case_name(patient)] = volume.fingerprint()
        picked = [lab for lab in chosen if lab.patient == patient]
        if not picked:
            continue
        index = [lab.slice_number - 1 for lab in picked]
        target = [rows[lab.slice_id] for lab in picked]
        hu = volume.hu[:, :, index]
        images[target] = prepared_slices(hu, cfg.level, cfg.width, size).numpy()
        masks[target] = resize_masks(
            torch.from_numpy(to_slices(volume.mask[:, :, index])), size
        ).numpy()
    return images, masks, fingerprints


def _lost_to_resize(chosen: list[SliceLabel], masks: np.ndarray) -> list[SliceLabel]:
    """The slices labelled hemorrhage whose resized mask holds no bleed pixel."""
    visible = masks.any(axis=(1, 2))
    return [lab for lab, seen in zip(chosen, visible, strict=True) if lab.has_ich and not seen]


def _without_lost(
    release: VolumeRelease,
    ich: list[SliceLabel],
    clean: list[SliceLabel],
    lost: list[SliceLabel],
    size: int,
) -> list[SliceLabel]:
    """The balanced set of the hemorrhage slices a bleed pixel is left in and as many of the
    clean slices, the first of those drawn, sorted by slice (`LOST_TO_RESIZE_RULE`)."""
    gone = {lab.slice_id for lab in lost}
    kept = [lab for lab in ich if lab.slice_id not in gone]
    if not kept:
        raise IchsegError(
            f"{release.root} ({release.source}): expected hemorrhage slices to balance, found "
            f"none with a bleed pixel left at {size} px (the resize emptied the masks of all "
            f"{len(lost)}); prepare at a larger size"
        )
    return sorted(kept + clean[: len(kept)], key=_by_slice)


def _lost_summary(lost: list[SliceLabel], size: int) -> dict:
    """meta.json's `lost_to_resize`: the rule, the size, and the slices overall and per subtype."""

    def slices(ids: list[str]) -> dict:
        return {"n_slices": len(ids), "slice_ids": ids}

    return {
        "rule": LOST_TO_RESIZE_RULE,
        "size": size,
        **slices([lab.slice_id for lab in lost]),
        "subtypes": {
            name: slices([lab.slice_id for lab in lost if lab.subtypes[i]])
            for i, name in enumerate(SUBTYPES)
        },
    }


def lost_to_resize_warning(meta: dict) -> str | None:
    """One line naming the slices labelled hemorrhage the resize left without a bleed pixel (how
    many, per subtype, the first few ids), from a cache's meta.json; None when there are none."""
    lost = meta.get("lost_to_resize") or {}
    n = lost.get("n_slices", 0)
    if not n:
        return None
    per_subtype = ", ".join(
        f"{name} {found['n_slices']}"
        for name, found in lost["subtypes"].items()
        if found["n_slices"]
    )
    ids = ", ".join(lost["slice_ids"][:WARN_IDS])
    more = f" and {n - WARN_IDS} more" if n > WARN_IDS else ""
    return (
        f"{n} slices labelled hemorrhage ({per_subtype or 'no subtype'}) have no bleed pixel "
        f"left at {lost['size']} px and are left out of the balanced set: {ids}{more} "
        "(meta.json lost_to_resize)"
    )


def _write_index(path: Path, chosen: list[SliceLabel]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(INDEX_COLUMNS)
        for row, lab in enumerate(chosen):
            writer.writerow(
                [
                    row,
                    lab.slice_id,
                    lab.patient,
                    lab.slice_number,
                    int(lab.has_ich),
                    *lab.subtypes,
                    lab.fracture,
                ]
            )


def _counts(chosen: list[SliceLabel], release: VolumeRelease, lost: list[SliceLabel]) -> dict:
    n_ich = sum(lab.has_ich for lab in chosen)
    return {
        "n_slices": len(chosen),
        "n_ich": n_ich,
        "n_clean": len(chosen) - n_ich,
        "n_patients": len({lab.patient for lab in chosen}),
        "subtypes": {
            name: sum(lab.subtypes[i] for lab in chosen) for i, name in enumerate(SUBTYPES)
        },
        "fracture": sum(lab.fracture for lab in chosen),
        "release_slices": len(release.labels),
        "release_patients": len(release.patients),
        "lost_to_resize": len(lost),
    }


def load_prepared(cache_dir: str | Path) -> PreparedData:
    """Load a cache folder written by `prepare`, checking its files exist and agree in length."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise IchsegError(f"{cache_dir}: expected a prepared cache folder, found none")
    for name in CACHE_FILES:
        if not (cache_dir / name).is_file():
            raise IchsegError(
                f"{cache_dir / name}: missing from the prepared cache; delete {cache_dir} and "
                "run prepare again"
            )
    images = _load_array(cache_dir / "images.npy", np.uint8)
    masks = _load_array(cache_dir / "masks.npy", np.bool_)
    if masks.shape != images.shape:
        raise IchsegError(
            f"{cache_dir / 'masks.npy'}: expected shape {images.shape} as images.npy, "
            f"found {masks.shape}"
        )
    ids, patients, has_ich, subtypes = _read_index(cache_dir / "index.csv", len(images))
    _check_labels_match_masks(cache_dir, ids, has_ich, masks)
    splits = read_json_object(cache_dir / "splits.json")
    meta = read_json_object(cache_dir / "meta.json")
    known = set(ids)
    listed = [*splits.get("test", [])]
    for fold in splits.get("folds", []):
        listed += fold.get("train", []) + fold.get("val", [])
    if "folds" not in splits or not known.issuperset(listed):
        raise IchsegError(
            f"{cache_dir / 'splits.json'}: expected test and folds over the ids of index.csv, "
            "found missing keys or unknown ids"
        )
    return PreparedData(images, masks, ids, patients, has_ich, subtypes, splits, meta)


def _check_labels_match_masks(
    cache_dir: Path, ids: list[str], has_ich: np.ndarray, masks: np.ndarray
) -> None:
    """Every row is a positive exactly when its mask holds a bleed pixel (the module's rule)."""
    differ = np.flatnonzero(masks.any(axis=(1, 2)) != has_ich)
    if len(differ):
        row = int(differ[0])
        found = "an empty mask" if has_ich[row] else "a bleed in its mask"
        raise IchsegError(
            f"{cache_dir / 'index.csv'}: expected has_ich=1 exactly where masks.npy holds a "
            f"bleed pixel, found row {row} ({ids[row]}) with has_ich={int(has_ich[row])} and "
            f"{found} ({len(differ)} such rows; caches before version 3 kept slices whose bleed "
            f"the resize emptied); delete {cache_dir} and run prepare again"
        )


def _load_array(path: Path, dtype: type) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise IchsegError(
            f"{path}: expected a numpy array file, found unreadable data ({err})"
        ) from err
    if array.dtype != dtype or array.ndim != 3:
        raise IchsegError(
            f"{path}: expected a 3-d {np.dtype(dtype).name} array, "
            f"found {array.ndim}-d {array.dtype.name}"
        )
    return array


def _read_index(path: Path, n: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = tuple(next(reader, ()))
        rows = list(reader)
    if header != INDEX_COLUMNS:
        raise IchsegError(
            f"{path}: expected header {','.join(INDEX_COLUMNS)}, found {','.join(header)}"
        )
    if len(rows) != n:
        raise IchsegError(
            f"{path}: expected {n} rows (one per image in images.npy), found {len(rows)}"
        )
    try:
        table = np.array([[int(v) for v in (r[0], *r[2:])] for r in rows], dtype=np.int64)
    except (ValueError, IndexError) as err:
        raise IchsegError(
            f"{path}: expected integer columns besides slice_id, found {err}"
        ) from err
    if table.shape != (n, len(INDEX_COLUMNS) - 1) or not np.array_equal(table[:, 0], np.arange(n)):
        raise IchsegError(
            f"{path}: expected rows numbered 0..{n - 1} with {len(INDEX_COLUMNS)} columns"
        )
    ids = [r[1] for r in rows]
    if ids != [slice_id(int(p), int(s)) for p, s in table[:, 1:3]]:
        raise IchsegError(f"{path}: expected slice_id to match the patient and slice columns")
    subtypes = table[:, 4 : 4 + len(SUBTYPES)].astype(np.uint8)
    return ids, table[:, 1].copy(), table[:, 3].astype(bool), subtypes
