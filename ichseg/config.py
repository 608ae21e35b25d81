"""Hydra/OmegaConf glue: the custom resolvers the configs use, and instantiating their nodes."""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path
from types import ModuleType

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ichseg.errors import IchsegError, first_line


def scale_filters(base: list[int], width: float) -> list[int]:
    """Filters per level multiplied by `width` (at least 1), keeping the doubling per level;
    `width` is a validated `model.width` (> 0, `ichseg.config_schema`)."""
    scaled = [max(1, round(f * width)) for f in base]
    doubling = all(b == 2 * a for a, b in itertools.pairwise(base))
    if doubling and not all(b == 2 * a for a, b in itertools.pairwise(scaled)):
        raise ValueError(
            f"model.width={width} gives filters {scaled}: expected a width whose filters are "
            "whole numbers >= 1 that double per level (e.g. 0.125, 0.25, 0.5, 1)"
        )
    return scaled


def scale(base: int, width: float) -> int:
    """One width-scaled count (e.g. a network's first-level filters), at least 1."""
    return scale_filters([base], width)[0]


def div(numerator: float, denominator: float) -> float:
    """numerator / denominator, for keys derived from others (e.g. Keras' decay = lr / epochs)."""
    if denominator == 0:
        raise ValueError(f"div: cannot divide {numerator} by 0")
    return numerator / denominator


RESOLVERS = {"scale_filters": scale_filters, "scale": scale, "div": div}


def project_root() -> Path:
    """The folder holding the ichseg package and its `conf/` (the repository root in a
    checkout)."""
    return Path(__file__).resolve().parents[1]


def register_resolvers() -> None:
    """Register ichseg's resolvers once (idempotent)."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def locate_target(target: str, where: str) -> object:
    """The object a `_target_` names (`package.module.Name`), imported; otherwise one line naming
    what is missing: the module, the name in its module, or a module the import itself needs."""
    parts = target.split(".")
    head = f"{where}: cannot import {target}"
    if not all(part.isidentifier() for part in parts):
        raise IchsegError(f"{head}: expected a dotted import path such as package.module.Name")
    found: object = None
    for depth, part in enumerate(parts, 1):
        name = ".".join(parts[:depth])
        if found is not None and hasattr(found, part):
            found = getattr(found, part)
            continue
        if found is not None and not isinstance(found, ModuleType):
            raise IchsegError(f"{head}: {'.'.join(parts[: depth - 1])} has no {part}")
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and exc.name != name and not name.startswith(f"{exc.name}."):
                raise IchsegError(
                    f"{head}: importing {name} needs the module {exc.name}, which is not installed"
                ) from None
            if depth == 1:
                raise IchsegError(
                    f"{head}: no module named {name} (not installed, or its folder is not on "
                    "PYTHONPATH)"
                ) from None
            raise IchsegError(f"{head}: {'.'.join(parts[: depth - 1])} has no {part}") from None
        except Exception as exc:  # the module's own code failed: name the module and the cause
            raise IchsegError(
                f"{head}: importing {name} failed ({type(exc).__name__}: {first_line(exc)})"
            ) from None
    return found


def instantiate_checked(node: DictConfig, **kwargs):
    """`hydra.utils.instantiate`, re-raising a constructor's IchsegError as itself (one line)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, IchsegError):
            raise exc.__cause__ from None
        raise
