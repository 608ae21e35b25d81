"""A network is a config node: building it, and what training and the report ask of it.

`model.module.net` is `{_target_: dotted.path.To.Class, **arguments}`, built with
`hydra.utils.instantiate`. Any `torch.nn.Module` that maps (N, 1, H, W) images to (N, 1, H, W)
logits fits, from this package or any other found on the import path. A network may say more
about itself through two optional attributes:
- `size_divisor` (int): H and W must be multiples of it; without it probe forward passes on
  the meta device (shapes only, no arithmetic) find the smallest power of two that fits;
- `architecture` (dict): Table 1's architecture columns, any of `filters` (per level), `kernel`,
  `pool`, `dropout`, `batch_norm` (text or numbers); the config's `model.architecture` fills in
  what the network does not say, and the report prints "NA" for the rest.
Parameter counts and FLOPs are counted on the instantiated module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ichseg.config import instantiate_checked, locate_target
from ichseg.errors import IchsegError, first_line

NET_KEY = "model.module.net"
ARCHITECTURE_KEYS = ("filters", "kernel", "pool", "dropout", "batch_norm")
# Table 1's FLOPs are per slice at the paper's input size.
FLOPS_SIZE = 256
# Probe sizes are `PROBE_MULTIPLE` (odd) times a power of two up to `MAX_PROBE_FACTOR`.
PROBE_MULTIPLE = 9
MAX_PROBE_FACTOR = 1024


def net_config(node: Mapping | DictConfig, where: str = NET_KEY) -> dict:
    """The network's config as a plain, resolved dict with a `_target_`; IchsegError otherwise."""
    try:
        config = (
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        )
    except OmegaConfBaseException as exc:
        raise IchsegError(f"{where}: cannot be resolved ({first_line(exc)})") from None
    if not isinstance(config, Mapping) or not isinstance(config.get("_target_"), str):
        raise IchsegError(
            f"{where}: expected a network config {{_target_: module.Class, ...}}, found {config!r}"
        )
    return dict(config)


def build_net(node: Mapping | DictConfig, where: str = NET_KEY) -> nn.Module:
    """The network `node` describes; one-line IchsegError naming `where` when it cannot be built."""
    config = net_config(node, where)
    locate_target(config["_target_"], where)
    try:
        net = instantiate_checked(OmegaConf.create(config), _convert_="all")
    except IchsegError:
        raise
    except Exception as exc:  # the constructor's own error, whatever its class
        cause = exc.__cause__ if isinstance(exc, HydraException) and exc.__cause__ else exc
        raise IchsegError(
            f"{where}: cannot build {config['_target_']} ({first_line(cause)})"
        ) from None
    if not isinstance(net, nn.Module):
        raise IchsegError(
            f"{where}: {config['_target_']} built a {type(net).__name__}, expected a "
            "torch.nn.Module"
        )
    return net


def build_on_meta(node: Mapping | DictConfig, where: str = NET_KEY) -> nn.Module:
    """The network with its tensors on the meta device: shapes only, instant at any width."""
    with torch.device("meta"):
        return build_net(node, where).eval()


def _probe(net: nn.Module, size: int) -> torch.Tensor:
    """A zero (1, 1, size, size) image on the network's device, in its floating dtype."""
    tensor = next((t for t in (*net.parameters(), *net.buffers()) if t.is_floating_point()), None)
    if tensor is None:
        return torch.zeros(1, 1, size, size)
    return torch.zeros(1, 1, size, size, device=tensor.device, dtype=tensor.dtype)


class Probe(NamedTuple):
    """One probe pass: whether the output fits, and what came back (or was raised), in words."""

    fits: bool
    raised: bool
    outcome: str


def _described(out: object) -> str:
    """A network's output in words: a tensor's dtype and shape, a container's parts."""
    if isinstance(out, torch.Tensor):
        dtype = str(out.dtype).removeprefix("torch.")
        article = "an" if dtype[0] in "aeiou" else "a"
        return f"{article} {dtype} tensor of shape {tuple(out.shape)}"
    if isinstance(out, tuple | list):
        parts = ", ".join(_described(item) for item in out[:3]) + (", ..." if len(out) > 3 else "")
        return f"a {type(out).__name__} of {len(out)} ({parts})"
    if isinstance(out, Mapping):
        keys = ", ".join(map(repr, list(out)[:5])) + (", ..." if len(out) > 5 else "")
        return f"a {type(out).__name__} with keys {keys}"
    return f"a {type(out).__name__}"


def _probe_pass(net: nn.Module, size: int) -> Probe:
    """Put a (1, 1, size, size) image through `net` (in eval mode, so no batch statistics
    change): it fits when floating-point logits of the same shape come back."""
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(_probe(net, size))
    except Exception as exc:  # any failure of the forward pass is reported as what came back
        return Probe(False, True, f"raised {type(exc).__name__}: {first_line(exc)}")
    finally:
        net.train(training)
    fits = (
        isinstance(out, torch.Tensor)
        and out.is_floating_point()
        and tuple(out.shape) == (1, 1, size, size)
    )
    return Probe(fits, False, f"returned {_described(out)}")


def _name(net: nn.Module, target: str | None) -> str:
    """The network as the config names it: its `_target_`, else its class's import path."""
    return target or f"{type(net).__module__}.{type(net).__qualname__}"


def size_divisor(net: nn.Module, where: str = NET_KEY, target: str | None = None) -> int:
    """The factor H and W must be multiples of: the network's `size_divisor`, or the smallest
    power of two whose odd multiple it maps to logits of the same shape."""
    declared = getattr(net, "size_divisor", None)
    if declared is not None:
        return int(declared)
    first_returned = last = None
    factor = 1
    while factor <= MAX_PROBE_FACTOR:
        size = PROBE_MULTIPLE * factor
        probe = _probe_pass(net, size)
        if probe.fits:
            return factor
        last = (size, probe.outcome)
        if not probe.raised and first_returned is None:
            first_returned = last
        factor *= 2
    # What came back says more than an exception at the largest size.
    size, outcome = first_returned or last
    raise IchsegError(
        f"{where}: {_name(net, target)} does not map (1, 1, H, W) images to (1, 1, H, W) "
        f"floating-point logits for any H = W = {PROBE_MULTIPLE} x 2**k up to "
        f"{PROBE_MULTIPLE * MAX_PROBE_FACTOR}: for (1, 1, {size}, {size}) it {outcome}"
    )


def check_input_size(
    net: nn.Module, size: int, where: str = NET_KEY, target: str | None = None
) -> None:
    """Raise one line naming `data.size` and the factor unless `size`² slices fit `net`: a
    multiple of its declared `size_divisor`, or of the probed one and through a probe pass."""
    divisor = size_divisor(net, where, target)
    if size % divisor:
        raise IchsegError(
            f"data.size={size} is not allowed: {where} ({_name(net, target)}) needs a multiple "
            f"of {divisor} (e.g. {max(divisor, size // divisor * divisor)})"
        )
    if getattr(net, "size_divisor", None) is None:
        check_forward(net, size, where, target)


def check_forward(
    net: nn.Module, size: int, where: str = NET_KEY, target: str | None = None
) -> None:
    """Raise one line naming the network, the input and what came back unless a (1, 1, size,
    size) image gives floating-point logits of its shape (one pass: instant on the meta
    device, where the schema builds networks)."""
    probe = _probe_pass(net, size)
    if not probe.fits:
        raise IchsegError(
            f"{where}: {_name(net, target)} {probe.outcome} for a (1, 1, {size}, {size}) image; "
            f"expected (1, 1, {size}, {size}) floating-point logits (data.size={size})"
        )


def parameter_count(net: nn.Module) -> int:
    """How many numbers the network learns."""
    return sum(p.numel() for p in net.parameters())


def flops_per_slice(net: nn.Module, size: int = FLOPS_SIZE) -> int:
    """Forward FLOPs of one (1, 1, size, size) slice, counted by `torch.utils.flop_counter`
    (matrix products and convolutions; a multiply-add is two FLOPs)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(_probe(net, size))
    return int(counter.get_total_flops())


def architecture(net: nn.Module, config: Mapping | None = None) -> dict[str, Any]:
    """Table 1's architecture columns the network (its `architecture`) or `config` gives."""
    said = dict(getattr(net, "architecture", None) or {})
    for key, value in (config or {}).items():
        said.setdefault(key, value)
    return {key: said[key] for key in ARCHITECTURE_KEYS if said.get(key) is not None}
