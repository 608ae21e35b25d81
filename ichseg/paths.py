"""Paths that a later command reads are recorded absolute.

A relative path means something only in the folder it was typed in, but a job's `config.yaml`
and `job.json` and a prepared cache's `meta.json` are read later from anywhere (`make report`
runs in the project folder, `ichseg report` wherever it is started). So the paths they record are
made absolute when they are written, and a relative one recorded by an earlier ichseg is read
against the folder its job ran in (Hydra's `hydra.runtime.cwd`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path

# The config keys naming folders a job reads or writes, each after those it may derive from.
CONFIG_PATHS = (
    "paths.root_dir",
    "paths.data_dir",
    "paths.cache_dir",
    "paths.experiments_dir",
    "data.cache_root",
    "data.source.root",
)


def absolute(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """`path` (`~` expanded) made absolute: a relative one is taken from `base`, by default the
    working folder. Symbolic links are kept as they are."""
    found = Path(path).expanduser()
    if not found.is_absolute():
        found = Path(base if base is not None else os.getcwd()).expanduser().absolute() / found
    return str(found)


def is_relative(value: object) -> bool:
    """Whether `value` is a path that means something only in the folder it was typed in."""
    return (
        isinstance(value, str | os.PathLike)
        and bool(str(value))
        and not (Path(value).expanduser().is_absolute())
    )


def _config_entries(config: Mapping) -> Iterator[tuple[MutableMapping, str]]:
    """(node, key) of each `CONFIG_PATHS` entry `config` has, read one after the other."""
    for key in CONFIG_PATHS:
        *parents, leaf = key.split(".")
        node: object = config
        for name in parents:
            node = node.get(name) if isinstance(node, Mapping) else None
        if isinstance(node, MutableMapping) and leaf in node:
            yield node, leaf


def relative_config_paths(config: Mapping) -> list[str]:
    """The `CONFIG_PATHS` values of a job's config that are relative paths."""
    return [node[leaf] for node, leaf in _config_entries(config) if is_relative(node[leaf])]


def absolute_config_paths(
    config: MutableMapping, base: str | os.PathLike | None = None
) -> MutableMapping:
    """`config` (a job's DictConfig, or the dict of its `config.yaml`) with every
    `CONFIG_PATHS` entry that holds a relative path made absolute against `base`, in place."""
    for node, leaf in _config_entries(config):
        if is_relative(node[leaf]):
            node[leaf] = absolute(node[leaf], base)
    return config
