"""The training set is never scored as external validation.

Before a folder is scored as external (`ichseg evaluate --source --root`, `ichseg report
--external`), it is compared with the release each checkpoint was trained on. A checkpoint leads
to its prepared cache through its job folder (`<job>/checkpoints/<file>`: `cache_dir` in the
job's job.json), else through the cache key it records (`ichseg_split`) under its job's
`data.cache_root` or the project's `data/cache/`. The cache's meta.json recognises its release by
- its folder (`release_root`, resolved);
- the hash of what its labels come from (`labels_sha256`), the same for a copy in another folder;
- every volume's content hashes (`volume_sha256`, `ichseg.data.release.PatientVolume.fingerprint`):
  the same scan, or the same non-empty bleed mask, in any folder, file format, layout or axis
  order. Only external volumes of a training volume's shape (read from their headers) are loaded.
A folder that is the release, a copy of it, or holds any of its volumes is refused in one line.
A cache prepared before the volume hashes were recorded is compared by folder and labels only,
and a checkpoint whose cache cannot be found not at all; each is said once on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from ichseg.checkpoint import Checkpoint
from ichseg.config import project_root
from ichseg.data.release import VolumeRelease, read_json_object
from ichseg.errors import IchsegError
from ichseg.sweeps.local import read_job_config, read_job_state

# What a later run needs to compare every volume; caches of an earlier ichseg lack it.
VOLUME_HASHES = "volume_sha256"
# Warnings already given in this process (the report evaluates one ensemble after another).
_said: set[str] = set()
# Fingerprints of external volumes already read: (scan, mask, their sizes and times) -> hashes.
_fingerprints: dict[tuple, dict] = {}


def _warn_once(command: str, text: str) -> None:
    if text not in _said:
        _said.add(text)
        print(f"ichseg {command}: warning: {text}", file=sys.stderr)


def _cache_of(checkpoint: Checkpoint) -> Path | None:
    """The prepared cache `checkpoint` was trained on, if it can be found."""
    # Training saves `<job>/checkpoints/<file>`; a checkpoint elsewhere has no job folder.
    job_dir = (
        checkpoint.path.parent.parent if checkpoint.path.parent.name == "checkpoints" else None
    )
    if job_dir is not None:
        cache_dir = read_job_state(job_dir).get("cache_dir")
        if cache_dir and (Path(cache_dir) / "meta.json").is_file():
            return Path(cache_dir)
    key = (checkpoint.split or {}).get("cache_key")
    if not key:
        return None
    roots = [project_root() / "data" / "cache"]
    if job_dir is not None:
        cache_root = (read_job_config(job_dir).get("data") or {}).get("cache_root")
        if cache_root:
            roots.insert(0, Path(cache_root))
    return next((root / key for root in roots if (root / key / "meta.json").is_file()), None)


def checkpoint_caches(checkpoints: Sequence[Checkpoint], where: str, command: str) -> list[Path]:
    """The prepared caches the checkpoints were trained on; a warning for each checkpoint
    whose cache cannot be found (`where` is then not compared with its training data)."""
    caches = []
    for checkpoint in checkpoints:
        cache = _cache_of(checkpoint)
        if cache is None:
            key = (checkpoint.split or {}).get("cache_key")
            keyed = f"its cache key {key} is in no cache folder" if key else "it records no key"
            _warn_once(
                command,
                f"checkpoint {checkpoint.path}: cannot find the prepared cache it was trained on "
                f"(no job.json beside it names one, and {keyed}): whether {where} holds its "
                "training volumes is not checked",
            )
        elif cache not in caches:
            caches.append(cache)
    return caches


def _fingerprint(release: VolumeRelease, patient: int) -> dict:
    """`PatientVolume.fingerprint` of one external volume, read once per process."""
    files = (release.scan_path(patient), release.mask_path(patient))
    key = tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files)
    if key not in _fingerprints:
        _fingerprints[key] = release.load_patient(patient).fingerprint()
    return _fingerprints[key]


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def _shared_volumes(meta: dict, release: VolumeRelease) -> list[str]:
    """The external cases whose scan, or non-empty mask, is one of the training volumes'."""
    trained = meta[VOLUME_HASHES].values()
    shapes = {tuple(t["shape"]) for t in trained}
    scans = {t["scan"] for t in trained}
    masks = {t["mask"] for t in trained if t["mask"]}
    shared = []
    for patient in release.patients:
        if release.header_geometry(patient)[0] not in shapes:
            continue
        found = _fingerprint(release, patient)
        if found["scan"] in scans or found["mask"] in masks:
            shared.append(release.case_name(patient))
    return shared


def check_not_training_data(
    caches: Iterable[Path], release: VolumeRelease, where: str, command: str
) -> None:
    """Raise when `release` (the external folder, named `where` in messages) is the release one
    of the prepared `caches` was made from, a copy of it, or holds any of its volumes."""
    # Every mask read and checked first: a release that cannot be scored fails before any work.
    _ = release.labels
    here = Path(release.root).resolve()
    for cache in caches:
        meta_path = cache / "meta.json"
        if not meta_path.is_file():
            _warn_once(
                command,
                f"{meta_path} is gone: whether {where} holds the volumes of the release the "
                "checkpoints were trained on is not checked",
            )
            continue
        meta = read_json_object(meta_path)
        made_from = meta.get("release_root")
        trained = (
            f"the release the checkpoints were trained on (prepared cache {cache}, made from "
            f"{made_from})"
        )
        n = len(release.patients)
        if made_from and Path(made_from).resolve() == here:
            overlap = f"is {trained}: all its {n} volumes"
        elif meta.get("labels_sha256") == release.labels_sha256:
            overlap = (
                f"has the labels (sha256 {release.labels_sha256[:12]}…) of {trained}: a copy, "
                f"all its {n} volumes"
            )
        elif VOLUME_HASHES not in meta:
            _warn_once(
                command,
                f"{meta_path} records no per-volume hashes (prepared by an earlier ichseg): "
                f"{where} was compared with its training release by folder and labels only; "
                "delete the cache and prepare it again (the next training run or report does) "
                "to compare every volume",
            )
            continue
        else:
            shared = _shared_volumes(meta, release)
            if not shared:
                continue
            overlap = f"{len(shared)} of its {n} volumes ({_listed(shared)}) are in {trained}"
        raise IchsegError(
            f"{where}: {overlap}; an external validation set must hold none of its volumes "
            "(the held-out patients of a patient-split cache are scored by ichseg evaluate "
            "--splits)"
        )


def check_not_trained_on(
    checkpoints: Sequence[Checkpoint],
    release: VolumeRelease,
    where: str | os.PathLike | None = None,
    command: str = "evaluate",
) -> None:
    """`check_not_training_data` against the caches the checkpoints were trained on: what
    `ichseg evaluate` runs before it scores an external folder."""
    where = str(where if where is not None else release.root)
    _ = release.labels  # a release that cannot be scored says so before any warning
    check_not_training_data(checkpoint_caches(checkpoints, where, command), release, where, command)
