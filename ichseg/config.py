"""Hydra/OmegaConf glue: the custom resolvers the configs use, and instantiating their nodes."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ichseg.errors import IchsegError


def scale_filters(base: list[int], width: float) -> list[int]:
    """Filters per level multiplied by `width` (at least 1), keeping the doubling per level."""
    if width <= 0:
        raise ValueError(f"model.width must be > 0, got {width}")
    return [max(1, round(f * width)) for f in base]


def div(numerator: float, denominator: float) -> float:
    """numerator / denominator, for keys derived from others (e.g. Keras' decay = lr / epochs)."""
    if denominator == 0:
        raise ValueError(f"div: cannot divide {numerator} by 0")
    return numerator / denominator


RESOLVERS = {"scale_filters": scale_filters, "div": div}


def register_resolvers() -> None:
    """Register ichseg's resolvers once (idempotent)."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def instantiate_checked(node: DictConfig, **kwargs):
    """`hydra.utils.instantiate`, re-raising a constructor's IchsegError as itself (one line)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, IchsegError):
            raise exc.__cause__ from None
        raise
