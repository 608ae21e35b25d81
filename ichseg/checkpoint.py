"""What an ichseg checkpoint carries, the one code that reads checkpoint files, and its writer.

A checkpoint is the dict Lightning saves (`torch.save`) for a `SegmentationModule`:
- `ichseg_checkpoint_version` (`VERSION_KEY`): 2 (`CHECKPOINT_VERSION`); checkpoints without it
  are version 1, and a newer version is refused;
- `hyper_parameters`: the module's constructor arguments; `net` (the network's resolved config
  node, `{_target_: ..., ...}`, see `ichseg.models.network`) is required, `threshold` (default
  0.5) and `min_detection_area` (default 0) are read. Version 1 had a U-Net's `filters`,
  `batch_norm` and `dropout` instead of `net`, and is read as that U-Net;
- `state_dict`: the module's weights, the network's under `net.`;
- `ichseg_preprocess` (`PREPROCESS_KEY`): the prepared cache's `Preprocess` settings, so a whole
  scan is read as the training slices were; older checkpoints lack it, and their job's
  `config.yaml` says instead;
- `ichseg_split` (`SPLIT_KEY`): the split it trained on (`split_provenance`), so a held-out
  evaluation can prove it never saw the patients it scores;
- `ichseg_rng` (`RNG_KEY`): the global RNG states, restored when training resumes;
- `ichseg_validation` (`VALIDATION_KEY`): the epoch and validation metrics of the last validation
  before it was saved, so inference can warn about a collapsed network (`ichseg.metrics`).
Lightning's own keys (optimizer states, loops, callbacks) only serve its resuming.
`write_checkpoint` writes the keys read here, as training does.
"""

from __future__ import annotations

import math
import numbers
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ichseg.config_schema import SCHEMA
from ichseg.errors import IchsegError, first_line, require_file
from ichseg.models.network import build_net
from ichseg.models.unet import unet_config

VERSION_KEY = "ichseg_checkpoint_version"
CHECKPOINT_VERSION = 2
# Where in its folder a job keeps the checkpoint it resumes from.
LAST_CHECKPOINT = "checkpoints/last.ckpt"
# Version 1 (no VERSION_KEY) described a U-Net by its filters, batch_norm and dropout.
READABLE_VERSIONS = (1, CHECKPOINT_VERSION)
HPARAMS_KEY = "hyper_parameters"
STATE_KEY = "state_dict"
PREPROCESS_KEY = "ichseg_preprocess"
SPLIT_KEY = "ichseg_split"
RNG_KEY = "ichseg_rng"
VALIDATION_KEY = "ichseg_validation"
NET_PREFIX = "net."
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
UNREADABLE = "checkpoint {path}: cannot read as a PyTorch checkpoint ({reason})"

# What torch.load raises on a file that is not a (complete) PyTorch checkpoint.
_TORCH_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    TypeError,
    zipfile.BadZipFile,
)


@dataclass(frozen=True)
class Preprocess:
    """The training inputs' settings: slice size in pixels, the CT window in HU, the intensity
    encoding (checkpoints written before it existed were all "linear")."""

    size: int
    level: float
    width: float
    intensity: str = "linear"

    @classmethod
    def parse(cls, values: dict, where: str) -> Preprocess:
        """Validate `{"size", "level", "width"[, "intensity"]}` read from `where` (named in
        errors)."""
        size, level, width = (values.get(key) for key in ("size", "level", "width"))
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise IchsegError(f"{where}: size: expected a positive integer, found {size!r}")
        for key, value in (("level", level), ("width", width)):
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not math.isfinite(value)
            ):
                raise IchsegError(f"{where}: {key}: expected a finite number, found {value!r}")
        # The rules the training config's window and intensity were checked by.
        if not SCHEMA["data.window_width"].accepts(width):
            raise IchsegError(f"{where}: width: expected a positive window width, found {width}")
        intensity = values.get("intensity", "linear")
        intensities = SCHEMA["data.intensity"]
        if not intensities.accepts(intensity):
            raise IchsegError(
                f"{where}: intensity: expected {intensities.allowed()}, found {intensity!r}"
            )
        return cls(int(size), float(level), float(width), intensity)

    def entry(self) -> dict:
        """The checkpoint's `PREPROCESS_KEY` entry."""
        return {
            "size": self.size,
            "level": self.level,
            "width": self.width,
            "intensity": self.intensity,
        }


def split_provenance(
    *,
    mode: str,
    split_seed: int,
    n_folds: int,
    fold: int,
    cache_key: str,
    train_patients: list[int],
    val_patients: list[int],
) -> dict:
    """The checkpoint's `SPLIT_KEY` entry: split mode and seed, fold, the prepared cache's key
    and the patients the network trained and validated on."""
    return {
        "mode": mode,
        "split_seed": split_seed,
        "n_folds": n_folds,
        "fold": fold,
        "cache_key": cache_key,
        "train_patients": list(train_patients),
        "val_patients": list(val_patients),
    }


def read_checkpoint(path: str | os.PathLike, unreadable: str = UNREADABLE) -> object:
    """The object `torch.load` reads from `path`, or an IchsegError formatted from `unreadable`
    (with `{path}` and `{reason}`) when the file is not a complete PyTorch checkpoint."""
    try:
        # Lightning checkpoints hold hyperparameters as Python objects, which the safe
        # (weights-only) unpickler refuses: load only checkpoints you trust.
        return torch.load(path, map_location="cpu", weights_only=False)
    except _TORCH_LOAD_ERRORS as err:
        raise IchsegError(unreadable.format(path=path, reason=first_line(err))) from None


@dataclass
class Checkpoint:
    """One training checkpoint as inference reads it; `net` is its network, in eval mode."""

    path: Path
    net: torch.nn.Module
    # The network's config node, as `ichseg.models.network.build_net` takes it.
    net_config: dict
    threshold: float
    min_detection_area: int
    # `PREPROCESS_KEY` as stored (None in older checkpoints); see `preprocess`.
    stored_preprocess: dict | None
    # The split it was trained on (`SPLIT_KEY`), None for checkpoints that do not carry one.
    split: dict | None
    # `VALIDATION_KEY` ({"epoch", "val"}), None for checkpoints that do not carry it.
    validation: dict | None = None

    def preprocess(self) -> tuple[Preprocess, str]:
        """The preprocessing it was trained with and where that was read: the checkpoint, or
        for older checkpoints the job's `config.yaml` (`<job>/checkpoints/x.ckpt`)."""
        if self.stored_preprocess is not None:
            where = f"checkpoint {self.path} {PREPROCESS_KEY}"
            return Preprocess.parse(self.stored_preprocess, where), "checkpoint"
        config = self.path.parent.parent / "config.yaml"
        if not config.is_file():
            raise IchsegError(
                f"checkpoint {self.path}: no preprocessing settings; expected '{PREPROCESS_KEY}' "
                f"in the checkpoint or data.size/window_level/window_width in {config}, found "
                "neither"
            )
        return _config_preprocess(config, self.path), str(config)


def _config_preprocess(config: Path, checkpoint: Path) -> Preprocess:
    """The `data` block's size and window in a job's `config.yaml`."""
    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise IchsegError(f"{config}: cannot read as YAML ({first_line(err)})") from None
    block = data.get("data") if isinstance(data, dict) else None
    if not isinstance(block, dict):
        raise IchsegError(f"{config}: expected a 'data' block for the checkpoint {checkpoint.name}")
    keys = {"size": "size", "level": "window_level", "width": "window_width"}
    missing = [f"data.{key}" for key in keys.values() if key not in block]
    if missing:
        raise IchsegError(f"{config}: missing {', '.join(missing)} (needed by {checkpoint.name})")
    values = {ours: block[theirs] for ours, theirs in keys.items()}
    values["intensity"] = block.get("intensity", "linear")
    return Preprocess.parse(values, str(config))


def module_net_config(module: Mapping) -> dict | None:
    """The network of a SegmentationModule's arguments (a checkpoint's hyper_parameters or a
    job's `model.module`): `net`, or, where they were written before networks were config
    nodes, the U-Net their `filters`, `batch_norm` and `dropout` describe; None without either."""
    if "net" in module:
        return dict(module["net"])
    if "filters" in module:
        return unet_config(
            module["filters"], module.get("batch_norm", False), module.get("dropout", 0.0)
        )
    return None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a SegmentationModule checkpoint and rebuild its network (eval mode, on the CPU)."""
    path = Path(path)
    require_file(path, "checkpoint", "a checkpoint file")
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get(HPARAMS_KEY) if isinstance(checkpoint, dict) else None
    state = checkpoint.get(STATE_KEY) if isinstance(checkpoint, dict) else None
    weights = (
        {k[len(NET_PREFIX) :]: v for k, v in state.items() if k.startswith(NET_PREFIX)}
        if isinstance(state, dict)
        else {}
    )
    version = checkpoint.get(VERSION_KEY, 1) if isinstance(checkpoint, dict) else 1
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise IchsegError(
            f"checkpoint {path}: {VERSION_KEY} {version!r}, this ichseg reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; use the ichseg that wrote it"
        )
    net_key = "net" if version >= 2 else "filters"
    if not isinstance(hparams, dict) or net_key not in hparams or not weights:
        keys = (
            sorted(map(str, checkpoint))[:6]
            if isinstance(checkpoint, dict)
            else type(checkpoint).__name__
        )
        raise IchsegError(
            f"checkpoint {path}: not an ichseg SegmentationModule checkpoint of version {version} "
            f"(expected {HPARAMS_KEY} with {net_key} and {NET_PREFIX}* weights in {STATE_KEY}, "
            f"found {keys})"
        )
    where = f"checkpoint {path} {HPARAMS_KEY}.net"
    try:
        config = module_net_config(hparams)
        threshold = float(hparams.get("threshold", 0.5))
        min_detection_area = int(hparams.get("min_detection_area", 0))
        net = build_net(config, where)
    except (TypeError, ValueError) as err:
        raise IchsegError(f"checkpoint {path}: bad {HPARAMS_KEY} ({first_line(err)})") from None
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise IchsegError(
            f"checkpoint {path}: weights do not fit the network of its {HPARAMS_KEY} "
            f"({config.get('_target_')}): {detail}"
        ) from None
    stored = checkpoint.get(PREPROCESS_KEY)
    split = checkpoint.get(SPLIT_KEY)
    return Checkpoint(
        path=path,
        net=net.eval(),
        net_config=dict(config),
        threshold=threshold,
        min_detection_area=min_detection_area,
        stored_preprocess=stored if isinstance(stored, dict) else None,
        split=split if isinstance(split, dict) else None,
        validation=_validation(checkpoint.get(VALIDATION_KEY)),
    )


def _validation(entry: object) -> dict | None:
    """`VALIDATION_KEY` as stored when it has an epoch and a dict of metrics, else None."""
    if isinstance(entry, dict) and isinstance(entry.get("val"), dict) and "epoch" in entry:
        return entry
    return None


def write_checkpoint(
    path: str | os.PathLike,
    hyper_parameters: Mapping,
    state_dict: Mapping[str, torch.Tensor],
    *,
    preprocess: Preprocess | None = None,
    split: dict | None = None,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write a checkpoint with the keys `load_checkpoint` reads (and any `extra` keys, such as
    Lightning's), as training saves them; the parent folder is created."""
    path = Path(path)
    checkpoint: dict[str, object] = {
        **(extra or {}),
        VERSION_KEY: CHECKPOINT_VERSION,
        HPARAMS_KEY: dict(hyper_parameters),
        STATE_KEY: dict(state_dict),
    }
    if preprocess is not None:
        checkpoint[PREPROCESS_KEY] = preprocess.entry()
    if split is not None:
        checkpoint[SPLIT_KEY] = split
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
