"""What figures call the network behind a set of checkpoints.

A checkpoint trained by `train.py` sits in its job's folder (`<job>/checkpoints/x.ckpt`) beside
the job's `config.yaml`, whose `model.display_name` (else `model.name`) is how the report names
it (U-Net, D-Unet). A checkpoint moved elsewhere is named by its network's class and the
architecture values its network config gives (`ichseg.models.network.ARCHITECTURE_KEYS`), so a
U-Net and a D-Unet still read differently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from ichseg.errors import IchsegError
from ichseg.models.network import ARCHITECTURE_KEYS
from ichseg.sweeps.local import read_job_config


def _job_model_name(checkpoint: Path) -> str | None:
    """`model.display_name` (else `model.name`) of the job folder holding `checkpoint`."""
    try:
        model = read_job_config(checkpoint.parent.parent).get("model")
    except (IchsegError, OSError, UnicodeDecodeError):
        return None
    if not isinstance(model, dict):
        return None
    name = model.get("display_name") or model.get("name")
    return str(name) if name else None


def _value_text(value: object) -> str:
    if isinstance(value, list | tuple):
        return "-".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _described(net_config: Mapping) -> str:
    """The network's class and the architecture values its config gives, e.g.
    `UNet (filters 32-64-128, batch norm both, dropout 0.2)`."""
    target = str(net_config.get("_target_", "unknown network"))
    said = [
        f"{key.replace('_', ' ')} {_value_text(net_config[key])}"
        for key in ARCHITECTURE_KEYS
        if net_config.get(key) is not None
    ]
    name = target.rsplit(".", 1)[-1]
    return f"{name} ({', '.join(said)})" if said else name


def network_name(checkpoints: Iterable[tuple[str | Path, Mapping]]) -> str:
    """The name of the network of (checkpoint path, network config) pairs: each one's job's
    model name, else its described network; different ones joined with ' + '."""
    names = [_job_model_name(Path(path)) or _described(config) for path, config in checkpoints]
    return " + ".join(dict.fromkeys(names)) or "no network"
