"""Hydra/OmegaConf glue: the custom resolvers the configs use."""

from __future__ import annotations

from omegaconf import OmegaConf


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
