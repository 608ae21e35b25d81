"""Write a sweep's prepared balanced set as an nnU-Net v2 raw dataset with ichseg's folds.

The images are the prepared cache's own uint8 slices (same windowing, size and balanced
selection every ichseg network trained on), the folds are the cache's `splits.json` folds as
nnU-Net's `splits_final.json`, and the test hold-out goes to `imagesTs/`, which nnU-Net never
trains on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ichseg.atomic import atomic_path, atomic_write_text
from ichseg.data.prepare import PreparedData, load_prepared
from ichseg.errors import IchsegError
from ichseg.nnunet.layout import (
    CHANNEL,
    ENV_PREPROCESSED,
    ENV_RAW,
    ENV_RESULTS,
    EXPORT_FILE,
    FILE_ENDING,
    LABELS,
    ORIGIN_KEY,
    SPLITS_FILE,
    dataset_folder_name,
    dataset_id_taken,
    env_folder,
    write_png,
)
from ichseg.sweeps.local import collect_sweep

# The dataset's source (Hssayeni et al. 2020, PhysioNet, doi:10.13026/4nae-zg36).
REFERENCE = "https://doi.org/10.13026/4nae-zg36"


@dataclass(frozen=True)
class Export:
    """Where an export went and what it holds."""

    dataset_dir: Path
    dataset_id: int
    n_train: int
    n_test: int
    n_folds: int
    split_mode: str
    written: bool  # False when the folder already held this very export
    splits_at: Path | None  # splits_final.json in $nnUNet_preprocessed, when placed there


def cache_of(path: str | Path) -> Path:
    """The prepared cache folder of `path`: the cache itself, or the one a sweep's jobs used."""
    path = Path(path)
    if (path / "meta.json").is_file() and (path / "splits.json").is_file():
        return path
    sweep = collect_sweep(path)
    caches = sorted({str(j.state["cache_dir"]) for j in sweep.jobs if j.state.get("cache_dir")})
    if not caches:
        raise IchsegError(
            f"{path}: no job of the sweep names its prepared cache (cache_dir in job.json); "
            "run the sweep first or give the cache folder"
        )
    if len(caches) > 1:
        raise IchsegError(
            f"{path}: the sweep's jobs used {len(caches)} prepared caches: " + ", ".join(caches)
        )
    cache = Path(caches[0])
    if not (cache / "meta.json").is_file():
        raise IchsegError(f"{cache}: the sweep's prepared cache is gone (no meta.json)")
    return cache


def splits_final(data: PreparedData) -> list[dict[str, list[str]]]:
    """nnU-Net's splits_final.json: fold k's train and val case ids are ichseg's fold k."""
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in data.splits["folds"]]


def export_origin(cache: Path, data: PreparedData) -> dict:
    """What ties an nnU-Net dataset (and its results folders) to one prepared cache and split."""
    splits = json.dumps(splits_final(data), sort_keys=True).encode()
    return {
        "cache_key": cache.name,
        "split": data.splits["mode"],
        "split_seed": data.splits["seed"],
        "n_folds": len(data.splits["folds"]),
        "size": int(data.images.shape[-1]),
        "splits_sha256": hashlib.sha256(splits).hexdigest(),
    }


def export_dataset(
    source: str | Path,
    raw_root: str | Path,
    dataset_id: int,
    preprocessed_root: str | Path | None = None,
) -> Export:
    """Write `raw_root/Dataset<NNN>_ICH/` (and its splits into `preprocessed_root`, if given)."""
    cache = cache_of(source)
    data = load_prepared(cache)
    raw_root = Path(raw_root)
    name = dataset_folder_name(dataset_id)
    taken = dataset_id_taken(raw_root, dataset_id)
    if taken is not None:
        raise IchsegError(
            f"{taken}: nnU-Net dataset id {dataset_id} is already used by this dataset; "
            "choose another --dataset-id"
        )
    folds = splits_final(data)
    test = list(data.splits["test"])
    train = sorted({sid for f in folds for sid in f["train"] + f["val"]})
    meta = data.meta.get("cfg", {})
    info = export_origin(cache, data)
    dataset_json = {
        "channel_names": {"0": "windowed_CT"},
        "labels": LABELS,
        "numTraining": len(train),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": (
            f"ichseg's balanced slice set: CT windowed at level {meta.get('level')} / width "
            f"{meta.get('width')} HU, 8-bit, {info['size']} px; case ids are ichseg slice ids "
            f"PPP_SS; folds are ichseg's ({info['split']} split, seed {info['split_seed']})"
        ),
        "reference": REFERENCE,
        "licence": _licence(data.meta),
        ORIGIN_KEY: info,
    }
    row = {sid: i for i, sid in enumerate(data.ids)}
    dest = raw_root / name
    splits_at = None
    if preprocessed_root is not None:
        splits_at = Path(preprocessed_root).resolve() / name / SPLITS_FILE
        splits_present = _splits_in_place(splits_at, folds)  # refused before anything is written
    written = not _same_export(dest, dataset_json)
    if written and (dest.exists() or dest.is_symlink()):
        raise IchsegError(
            f"{dest}: holds {_describe(dest)}, not this export ({info['cache_key']}, "
            f"{len(train)} training slices); nothing was changed: choose another --dataset-id, "
            "or remove that folder to replace it"
        )
    if written:
        _write(dest, data, row, train, test, dataset_json, folds, info, cache, dataset_id)
    if splits_at is not None and not splits_present:
        atomic_write_text(splits_at, json.dumps(folds, indent=1) + "\n")
    return Export(
        dest.resolve(),
        dataset_id,
        len(train),
        len(test),
        len(folds),
        info["split"],
        written,
        splits_at,
    )


def _licence(meta: dict) -> str:
    """The licence of the data behind a cache, as its source states it."""
    facts = meta.get("source_facts") or {}
    if facts.get("synthetic"):
        return "synthetic phantom"
    return str(facts.get("licence", f"unknown (data source {meta.get('source')!r})"))


def _describe(dest: Path) -> str:
    """What an existing dataset folder holds, for the refusal: its export's cache and size."""
    try:
        found = json.loads((dest / "dataset.json").read_text(encoding="utf-8"))
        cache_key = found[ORIGIN_KEY]["cache_key"]
        return f"another ichseg export (cache {cache_key}, {found['numTraining']} training slices)"
    except (OSError, ValueError, KeyError, TypeError):
        return "a dataset ichseg did not write"


def _same_export(dest: Path, dataset_json: dict) -> bool:
    """Whether `dest` already holds an ichseg export with exactly this dataset.json."""
    try:
        found = json.loads((dest / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (dest / EXPORT_FILE).is_file() and found == dataset_json


def _write(
    dest: Path,
    data: PreparedData,
    row: dict[str, int],
    train: list[str],
    test: list[str],
    dataset_json: dict,
    folds: list[dict[str, list[str]]],
    info: dict,
    cache: Path,
    dataset_id: int,
) -> None:
    """Write the dataset folder into a temporary sibling and rename it into place."""
    with atomic_path(dest, is_dir=True, owned_by=("dataset.json", EXPORT_FILE)) as tmp:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / sub).mkdir()
        for sid in train:
            write_png(tmp / "imagesTr" / f"{sid}{CHANNEL}{FILE_ENDING}", data.images[row[sid]])
            write_png(tmp / "labelsTr" / f"{sid}{FILE_ENDING}", data.masks[row[sid]])
        for sid in test:
            write_png(tmp / "imagesTs" / f"{sid}{CHANNEL}{FILE_ENDING}", data.images[row[sid]])
        _write_json(tmp / "dataset.json", dataset_json)
        _write_json(tmp / SPLITS_FILE, folds)
        _write_json(
            tmp / EXPORT_FILE,
            {
                **info,
                "cache_dir": str(cache.resolve()),
                "dataset_id": dataset_id,
                "source": data.meta.get("source"),
                "test": test,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


def _splits_in_place(path: Path, folds: list[dict[str, list[str]]]) -> bool:
    """Whether nnU-Net's splits_final.json already holds `folds`; other folds are refused."""
    if not path.is_file():
        return False
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise IchsegError(f"{path}: exists and is not readable JSON ({err})") from err
    if existing != folds:
        raise IchsegError(
            f"{path}: holds other folds than this export; remove it or choose another "
            "--dataset-id (nnU-Net would train on those folds instead)"
        )
    return True


def next_commands(export: Export) -> list[str]:
    """The nnU-Net commands that plan, train every fold and predict the test hold-out."""
    d = export.dataset_id
    n = export.n_folds
    name = export.dataset_dir.name
    trainer = "nnUNetTrainer__nnUNetPlans__2d"
    preprocessed = export.splits_at.parent.parent if export.splits_at else None
    results = env_folder(ENV_RESULTS)
    lines = [
        f"export {ENV_RAW}={export.dataset_dir.parent}",
        f"export {ENV_PREPROCESSED}={preprocessed or '<your preprocessed folder>'}",
        f"export {ENV_RESULTS}={results or '<your results folder>'}",
        f"nnUNetv2_plan_and_preprocess -d {d} -c 2d --verify_dataset_integrity",
    ]
    if export.splits_at is None:
        lines.append(
            f"cp {export.dataset_dir / SPLITS_FILE} $nnUNet_preprocessed/{name}/  "
            "# ichseg's folds, before training"
        )
    lines += [
        f"for f in $(seq 0 {n - 1}); do nnUNetv2_train {d} 2d $f --npz; done  "
        "# --npz keeps the validation probabilities ichseg scores",
        f"for f in $(seq 0 {n - 1}); do nnUNetv2_predict -d {d} -c 2d -f $f "
        f"-i {export.dataset_dir / 'imagesTs'} -o $nnUNet_results/{name}/{trainer}/fold_$f/test "
        "--save_probabilities; done  # test hold-out, one fold model at a time",
        f"ichseg nnunet import $nnUNet_results/{name}/{trainer} SWEEP",
    ]
    return lines
