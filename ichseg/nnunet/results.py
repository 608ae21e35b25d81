"""Read nnU-Net v2 results of an exported dataset and score them as a third architecture.

`import_results` checks that the results belong to the sweep's prepared cache and folds (the
origin the export put in dataset.json travels into every nnU-Net results folder), reads each
fold's validation probabilities (`nnUNetv2_train ... --npz`) and, where present, its test-split
probabilities, scores the validation slices under every ichseg protocol exactly as a trained
ichseg job is scored (same slices, order and evaluation batches), and writes one job folder per
fold, `<sweep>/nnunet-fold<k>/`, in ichseg's own file contract. The report then shows nnU-Net as
one more architecture, with one checkpoint: nnU-Net's own final one.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ichseg.atomic import atomic_path, check_replaceable
from ichseg.data.prepare import PreparedData, load_prepared
from ichseg.data.release import read_json_object
from ichseg.errors import IchsegError
from ichseg.jobs.records import upsert_record, write_job
from ichseg.metrics import METRICS_VERSION, ProtocolAccumulator
from ichseg.nnunet.export import cache_of, export_origin
from ichseg.nnunet.layout import ORIGIN_KEY
from ichseg.sweeps.local import collect_sweep
from ichseg.sweeps.model import CONFIG_FILE, IMPORTED_TEST_FILE, Job, Sweep

MODEL = "nnunet"
IMPORT_FILE = "nnunet_import.json"
# What trained the imported jobs (their job.json's `trained_by`).
TRAINED_BY = "nnU-Net v2"
# nnU-Net's trained-model folder: <trainer>__<plans>__<configuration>, three names without a
# double underscore; configurations hold single ones (2d, 3d_fullres, 3d_lowres).
_NAME = r"(?:(?!__)[^/])+"
_TRAINER_DIR = re.compile(
    rf"^(?P<trainer>{_NAME})__(?P<plans>{_NAME})__(?P<configuration>{_NAME})$"
)
# nnU-Net's argmax of two softmax channels is the foreground probability above one half.
THRESHOLD = 0.5


@dataclass(frozen=True)
class FoldResult:
    """One fold's nnU-Net predictions, read and checked."""

    fold: int
    epochs: int
    val: np.ndarray  # (n_val, S, S) float32 foreground probabilities, in ichseg's val order
    test: np.ndarray | None  # (n_test, S, S) in ichseg's test order, when predicted


def trainer_folder(path: str | Path) -> Path:
    """The trained-model folder: `path` itself, or the single one inside a dataset folder."""
    path = Path(path)
    if not path.is_dir():
        raise IchsegError(f"{path}: nnU-Net results folder not found")
    if _TRAINER_DIR.match(path.name) and (path / "dataset.json").is_file():
        return path
    inside = sorted(p for p in path.iterdir() if p.is_dir() and _TRAINER_DIR.match(p.name))
    if len(inside) == 1:
        return inside[0]
    if not inside:
        raise IchsegError(
            f"{path}: expected nnU-Net's <trainer>__<plans>__<configuration> folder (with "
            "dataset.json and fold_<k>/), found none"
        )
    raise IchsegError(
        f"{path}: holds {len(inside)} trained-model folders ({', '.join(p.name for p in inside)}); "
        "give the one to import"
    )


def _json(path: Path) -> dict:
    """A JSON object file of the results folder; one line when missing or unreadable."""
    if not path.is_file():
        raise IchsegError(f"{path}: missing from the nnU-Net results folder")
    return read_json_object(path)


def check_export_origin(folder: Path, expected: dict) -> None:
    """Refuse results of another dataset, another prepared cache or another split."""
    dataset_json = folder / "dataset.json"
    found = _json(dataset_json).get(ORIGIN_KEY)
    if not isinstance(found, dict):
        raise IchsegError(
            f"{dataset_json}: no '{ORIGIN_KEY}' entry; these results are of a dataset "
            "`ichseg nnunet export` did not write"
        )
    if found.get("cache_key") != expected["cache_key"]:
        raise IchsegError(
            f"{dataset_json}: results of prepared cache {found.get('cache_key')}, but the sweep "
            f"trained on {expected['cache_key']}; import the results of this sweep's export"
        )
    if found.get("splits_sha256") != expected["splits_sha256"]:
        raise IchsegError(
            f"{dataset_json}: results of other folds than the sweep's ({found.get('split')} "
            f"split); export this sweep again and retrain nnU-Net"
        )


def _configuration(folder: Path) -> tuple[str, dict]:
    """The configuration name and its plans entry; only 2-d plans fit ichseg's slices."""
    configuration = _TRAINER_DIR.match(folder.name)["configuration"]
    plans = _json(folder / "plans.json")
    config = (plans.get("configurations") or {}).get(configuration)
    if not isinstance(config, dict):
        raise IchsegError(
            f"{folder / 'plans.json'}: no configuration '{configuration}'; this nnU-Net "
            "version's layout differs from the one ichseg reads"
        )
    if len(config.get("patch_size", ())) != 2:
        raise IchsegError(
            f"{folder}: configuration '{configuration}' is not 2-d; train nnU-Net's '2d' "
            "configuration on the exported slices"
        )
    return configuration, config


def _epochs(fold_dir: Path) -> int:
    """The epochs nnU-Net trained this fold for; it must have finished (checkpoint_final)."""
    if not (fold_dir / "checkpoint_final.pth").is_file():
        raise IchsegError(
            f"{fold_dir}: no checkpoint_final.pth; this fold's nnU-Net training has not finished"
        )
    debug = _json(fold_dir / "debug.json")
    try:
        return int(debug["num_epochs"])
    except (KeyError, TypeError, ValueError):
        raise IchsegError(
            f"{fold_dir / 'debug.json'}: expected num_epochs; this nnU-Net version's layout "
            "differs from the one ichseg reads"
        ) from None


def read_probabilities(folder: Path, ids: list[str], size: int, what: str) -> np.ndarray:
    """Foreground probabilities (n, S, S) of `ids` from nnU-Net's `<case>.npz` files."""
    if not folder.is_dir():
        raise IchsegError(f"{folder}: missing; expected nnU-Net's {what} predictions here")
    found = {p.stem for p in folder.glob("*.npz")}
    if not found:
        raise IchsegError(
            f"{folder}: no .npz probabilities; run nnU-Net with --npz (training, or "
            "`nnUNetv2_train ... --val --npz` to redo validation) or --save_probabilities "
            "(predict)"
        )
    wanted = set(ids)
    if found != wanted:
        extra, missing = sorted(found - wanted), sorted(wanted - found)
        detail = "; ".join(
            part
            for part in (
                f"{len(extra)} not in it (e.g. {extra[0]})" if extra else "",
                f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            )
            if part
        )
        raise IchsegError(
            f"{folder}: case ids differ from ichseg's {what} slices: {detail}; these "
            "predictions were made on another split"
        )
    out = np.empty((len(ids), size, size), dtype=np.float32)
    for i, sid in enumerate(ids):
        path = folder / f"{sid}.npz"
        try:
            with np.load(path, allow_pickle=False) as npz:
                prob = npz["probabilities"]
        except KeyError:
            raise IchsegError(
                f"{path}: no 'probabilities' array; this nnU-Net version's layout differs "
                "from the one ichseg reads"
            ) from None
        except (OSError, ValueError) as err:
            raise IchsegError(f"{path}: unreadable npz ({err})") from err
        if prob.shape != (2, 1, size, size):
            raise IchsegError(
                f"{path}: probabilities of shape {prob.shape}, expected (2, 1, {size}, {size}) "
                "(background and hemorrhage of one exported slice)"
            )
        foreground = prob[1, 0]
        if not np.all(np.isfinite(foreground)) or foreground.min() < 0 or foreground.max() > 1:
            raise IchsegError(f"{path}: probabilities outside [0, 1] or not finite")
        out[i] = foreground
    return out


def read_fold(folder: Path, fold: int, data: PreparedData) -> FoldResult:
    """One fold's epochs, validation and (when predicted) test probabilities."""
    fold_dir = folder / f"fold_{fold}"
    if not fold_dir.is_dir():
        raise IchsegError(f"{fold_dir}: missing; nnU-Net has not trained fold {fold}")
    epochs = _epochs(fold_dir)
    size = int(data.images.shape[-1])
    val_ids = list(data.splits["folds"][fold]["val"])
    val = read_probabilities(fold_dir / "validation", val_ids, size, f"fold {fold} validation")
    test_dir = fold_dir / "test"
    test = None
    if test_dir.is_dir():
        test = read_probabilities(test_dir, list(data.splits["test"]), size, "test")
    return FoldResult(fold, epochs, val, test)


def score(
    prob: np.ndarray,
    target: np.ndarray,
    batch_size: int,
    eval_batch_size: int,
    epoch: int,
    min_area: int,
) -> dict[str, float]:
    """Every validation protocol over `prob`, batched as ichseg's validation loader batches."""
    acc = ProtocolAccumulator(min_area=min_area, threshold=THRESHOLD)
    p = torch.from_numpy(prob).unsqueeze(1)
    t = torch.from_numpy(target).unsqueeze(1)
    for pb, tb in zip(p.split(eval_batch_size), t.split(eval_batch_size), strict=True):
        acc.update(pb, tb)
    # The onebatch draw of a job's last epoch: ichseg seeds it with 1 + the 0-based epoch.
    draw = (batch_size, torch.Generator().manual_seed(epoch))
    return {k: (v if math.isfinite(v) else None) for k, v in acc.compute(draw).items()}


def _template(sweep: Sweep) -> Job:
    """A trained ichseg job of the sweep whose config the nnU-Net jobs' configs start from."""
    for job in sweep.jobs:
        if job.config and job.model != MODEL and job.state.get("cache_dir"):
            return job
    raise IchsegError(f"{sweep.root}: no ichseg job with a config.yaml to import nnU-Net beside")


def _kernel_text(kernel_sizes: object) -> str | None:
    """nnU-Net's per-stage kernel sizes as Table 1 writes one kernel, e.g. 3x3; None when the
    plans do not say or the stages differ."""
    if not isinstance(kernel_sizes, list) or not kernel_sizes:
        return None
    kinds = {"x".join(str(k) for k in stage) for stage in kernel_sizes if isinstance(stage, list)}
    return kinds.pop() if len(kinds) == 1 else None


def _config(template: Job, fold: int, epochs: int, plans: dict, configuration: str) -> dict:
    """The nnU-Net job's config: the sweep's data and evaluation settings, nnU-Net's network."""
    config = copy.deepcopy(template.config)
    arch = (plans.get("architecture") or {}).get("arch_kwargs") or {}
    module = template.config.get("model", {}).get("module", {})
    config["model"] = {
        "name": MODEL,
        "display_name": "nnU-Net (own final checkpoint)",
        "module": {
            "threshold": THRESHOLD,
            "min_detection_area": int(module.get("min_detection_area", 0)),
        },
        # Table 1's architecture columns of nnU-Net's 2-d plans (its PlainConvUNet).
        "architecture": {
            "filters": [int(f) for f in arch.get("features_per_stage", [])],
            "kernel": _kernel_text(arch.get("kernel_sizes")),
            "pool": "stride-2 conv",
            "batch_norm": "none: instance norm after every convolution; input "
            + (", ".join(str(n) for n in plans.get("normalization_schemes", [])) or "?"),
            "batch_size": plans.get("batch_size"),
        },
        "nnunet": {
            "configuration": configuration,
            "network": (plans.get("architecture") or {}).get("network_class_name"),
            "batch_size": plans.get("batch_size"),
            "patch_size": list(plans.get("patch_size", [])),
            "normalization": list(plans.get("normalization_schemes", [])),
        },
    }
    config["fold"] = fold
    config.setdefault("trainer", {})["max_epochs"] = epochs
    config["checkpoint_every"] = epochs
    return config


def _origin(names: dict) -> str:
    return f"{names['trainer']}__{names['plans']}__{names['configuration']}"


def check_one_nnunet(sweep: Sweep, names: dict) -> None:
    """Refuse results of another nnU-Net trainer, plans or configuration than the folds the
    sweep already holds: the report shows them as one architecture, so they must be one."""
    keys = ("trainer", "plans", "configuration")
    wanted = {key: names[key] for key in keys}
    others: dict[str, list[str]] = {}
    for job in sweep.jobs:
        source = job.state.get("imported_from")
        if job.model != MODEL or not isinstance(source, dict):
            continue
        found = {key: source.get(key) for key in keys}
        if found != wanted:
            others.setdefault(_origin(found), []).append(job.name)
    if others:
        held = "; ".join(f"{origin} ({', '.join(jobs)})" for origin, jobs in others.items())
        raise IchsegError(
            f"{sweep.root}: holds nnU-Net folds of {held}, these results are of "
            f"{_origin(wanted)}; one sweep has one nnU-Net row, so nothing was written: import "
            "them into a copy of the sweep, or remove those folders first"
        )


def import_results(
    results: str | Path, sweep_dir: str | Path, folds: list[int] | None = None
) -> list[Path]:
    """Score nnU-Net's results of the sweep's export; write `<sweep>/nnunet-fold<k>/` per fold."""
    folder = trainer_folder(results)
    sweep = collect_sweep(sweep_dir)
    cache = cache_of(sweep.root)
    data = load_prepared(cache)
    check_export_origin(folder, export_origin(cache, data))
    configuration, plans = _configuration(folder)
    wanted = sorted(set(folds if folds is not None else sweep.expected_folds))
    n_folds = len(data.splits["folds"])
    bad = [f for f in wanted if not 0 <= f < n_folds]
    if bad:
        raise IchsegError(f"--folds: {bad[0]} is not a fold of the sweep (0..{n_folds - 1})")
    missing = [f for f in wanted if not (folder / f"fold_{f}" / "checkpoint_final.pth").is_file()]
    if missing:
        raise IchsegError(
            f"{folder}: folds {', '.join(map(str, missing))} have no finished nnU-Net training "
            "(fold_<k>/checkpoint_final.pth); train them, or import the others with --folds"
        )
    read = [read_fold(folder, f, data) for f in wanted]
    with_test = [r.fold for r in read if r.test is not None]
    if with_test and len(with_test) != len(read):
        lacking = sorted(set(wanted) - set(with_test))
        raise IchsegError(
            f"{folder}: folds {', '.join(map(str, lacking))} have no test/ predictions while "
            f"folds {', '.join(map(str, with_test))} do; predict the test split with every fold"
        )
    names = _TRAINER_DIR.match(folder.name)
    check_one_nnunet(sweep, names.groupdict())
    template = _template(sweep)
    batch_size = int(template.get("data.batch_size"))
    eval_batch_size = int(template.get("data.eval_batch_size", None) or batch_size)
    row = {sid: i for i, sid in enumerate(data.ids)}
    dests = {r.fold: sweep.root / f"{MODEL}-fold{r.fold}" for r in read}
    for dest in dests.values():  # every fold's folder may be written before the first is
        check_replaceable(dest, (IMPORT_FILE,))
    written = []
    for result in read:
        config = _config(template, result.fold, result.epochs, plans, configuration)
        val_ids = data.splits["folds"][result.fold]["val"]
        target = data.masks[[row[sid] for sid in val_ids]]
        metrics = score(
            result.val,
            target,
            batch_size,
            eval_batch_size,
            result.epochs,
            config["model"]["module"]["min_detection_area"],
        )
        dest = dests[result.fold]
        with atomic_path(dest, is_dir=True, owned_by=(IMPORT_FILE,)) as tmp:
            (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False), "utf-8")
            source = {
                "results": str((folder / f"fold_{result.fold}").resolve()),
                "trainer": names["trainer"],
                "plans": names["plans"],
                "configuration": configuration,
                "epochs": result.epochs,
                "test_predicted": result.test is not None,
            }
            (tmp / IMPORT_FILE).write_text(json.dumps(source, indent=1) + "\n", "utf-8")
            if result.test is not None:
                np.save(tmp / IMPORTED_TEST_FILE, result.test)
            upsert_record(
                tmp,
                {
                    "model": MODEL,
                    "fold": result.fold,
                    "epoch": result.epochs,
                    "checkpoint": None,
                    "metrics_version": METRICS_VERSION,
                    "train": {},
                    "val": metrics,
                },
            )
            write_job(
                tmp,
                {
                    "model": MODEL,
                    "fold": result.fold,
                    "status": "done",
                    "cache_dir": str(cache),
                    "trained_by": TRAINED_BY,
                    "imported_from": source,
                },
            )
        written.append(dest)
    return written
