"""Command-line sweep syntax checked before Hydra sees it.

Hydra reads `fold=0..9` as the string "0..9" (a plain app then runs two jobs, not twenty).
`expand_ranges` turns every `key=a..b` into Hydra's `key=range(a,b+1)` (inclusive, as a
researcher reads it), and `check_overrides` rejects, with one line and before a single job
starts, models that do not exist, keys renamed since the first release (naming the new
spelling), keys the config does not have (naming the closest ones), any other override the
config cannot be composed with, and folds the schema's fold rule refuses (`check_fold`, the
rule `validate` applies to each job's config).
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from ichseg.config_schema import SCHEMA, check_fold, check_value
from ichseg.errors import IchsegError

RANGE = re.compile(r"^(?P<key>[+~]{0,2}[\w.\-/@]+)=(?P<a>-?\d+)\.\.(?P<b>-?\d+)$")
MULTIRUN_FLAGS = ("-m", "--multirun")
# Keys of earlier releases (git log -p -- conf/) and their spelling now.
RENAMED = {
    "data.root": "data.source.root",
    "data.phantom": "phantom",
    "data.phantom.root": "data.source.root",
    "data.phantom.patients": "phantom.patients",
    "data.phantom.size": "phantom.size",
    "data.phantom.seed": "phantom.seed",
}
# Nodes whose keys are not ichseg's to check.
FREE_PREFIXES = ("hydra.", "callbacks.", "logger.")


def is_multirun(argv: Iterable[str]) -> bool:
    """Whether the command line asks Hydra for a multirun."""
    return any(arg in MULTIRUN_FLAGS or arg == "hydra.mode=MULTIRUN" for arg in argv)


def expand_ranges(argv: list[str]) -> list[str]:
    """Rewrite `key=a..b` as `key=range(a,b+1)`; a range without `-m` is an error."""
    multirun = is_multirun(argv)
    out = []
    for arg in argv:
        match = RANGE.match(arg)
        if match is None:
            out.append(arg)
            continue
        key, a, b = match["key"], int(match["a"]), int(match["b"])
        if b < a:
            raise IchsegError(f"{arg}: an empty range; ranges are a..b with a <= b")
        if not multirun:
            raise IchsegError(
                f"{arg} sweeps {b - a + 1} values: add -m (python train.py -m {arg} ...)"
            )
        out.append(f"{key}=range({a},{b + 1})")
    return out


def _override_values(override) -> list:
    """Every value an override stands for (one for a plain value, all of a sweep)."""
    if override.is_sweep_override():
        return list(override.sweep_iterator())
    return [override.value()]


def _searchpath_folders(parsed: list) -> list[Path]:
    """The local config folders a `hydra.searchpath=[file://...]` override adds."""
    folders = []
    for override in parsed:
        if override.key_or_group == "hydra.searchpath" and not override.is_delete():
            for entry in override.value() or []:
                if isinstance(entry, str) and entry.startswith("file://"):
                    folders.append(Path(entry.removeprefix("file://")))
    return folders


def check_overrides(argv: list[str], conf_dir: Path) -> None:
    """Reject unknown `model=` names, renamed or unknown keys, overrides the config cannot be
    composed with, and `fold` values outside 0..data.n_folds-1 (of the composed config) or not
    integers."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise IchsegError(f"cannot parse the overrides: {_one_line(exc)}") from None
    folders = [conf_dir, *_searchpath_folders(parsed)]
    models = sorted({p.stem for folder in folders for p in (folder / "model").glob("*.yaml")})
    for override in parsed:
        if override.key_or_group == "model" and not override.is_delete():
            for value in _override_values(override):
                if value not in models:
                    raise IchsegError(
                        f"model={value} is unknown: expected one of {', '.join(models)} "
                        f"(files in {', '.join(str(f / 'model') for f in folders)})"
                    )
    cfg = check_keys(parsed, conf_dir)
    n_folds = OmegaConf.select(cfg, "data.n_folds", default=None)
    check_value("data.n_folds", n_folds, SCHEMA["data.n_folds"])
    for override in parsed:
        if override.key_or_group == "fold" and not override.is_delete():
            for value in _override_values(override):
                check_fold(value, n_folds, written=str(value))


def _one_line(exc: BaseException) -> str:
    """Hydra's message on one line, without its list of search paths."""
    return " ".join(str(exc).split()).split(" Config search path")[0]


def _is_group(override: Override, conf_dir: Path) -> bool:
    """Whether the override chooses a config group (`model=unet`, `hydra/launcher=gpus`)."""
    return (conf_dir / override.key_or_group).is_dir() or "/" in override.key_or_group


def _flat_keys(node: DictConfig, prefix: str = "") -> set[str]:
    """Every dotted key of `node` (containers and leaves), without resolving a value."""
    keys = set()
    for key in node:
        path = f"{prefix}{key}"
        keys.add(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            keys |= _flat_keys(child, f"{path}.")
    return keys


def _compose(conf_dir: Path, overrides: list[str]) -> DictConfig:
    """train.yaml composed with `overrides` (no sweeps), as Hydra will compose it."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(str(conf_dir.resolve()), version_base="1.3"):
            return compose("train", overrides=overrides)
    except HydraException as exc:
        raise IchsegError(_one_line(exc)) from None


def _parameter_of_target(cfg: DictConfig, key: str) -> bool:
    """Whether `key`'s parent node builds a `_target_` that takes a parameter of `key`'s name."""
    from hydra.utils import get_method

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else None
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return False
    try:
        return leaf in inspect.signature(get_method(target)).parameters
    except (HydraException, ImportError, ValueError, TypeError):
        return False


def check_keys(parsed: list[Override], conf_dir: Path) -> DictConfig:
    """Every key an override sets exists in the composed config (or, for `+key`, is a parameter
    of the object its node builds); renamed keys name their new spelling. Returns the config
    composed with every override that is not a sweep."""
    first = [o for o in parsed if _is_group(o, conf_dir)]
    groups = [f"{o.get_key_element()}={_override_values(o)[0]}" for o in first]
    # Config folders of the user's own (a data source written outside the package) first.
    groups += [o.input_line for o in parsed if o.key_or_group == "hydra.searchpath"]
    cfg = _compose(conf_dir, groups)
    valid = _flat_keys(cfg)
    for override in parsed:
        key = override.key_or_group
        if _is_group(override, conf_dir) or key.startswith(FREE_PREFIXES):
            continue
        if key in RENAMED and key not in valid:
            new = RENAMED[key]
            raise IchsegError(
                f"{override.input_line}: {key} was renamed {new}; write {new}=... instead"
            )
        if key == "data.source" and not override.is_delete():
            raise IchsegError(
                f"{override.input_line}: the data source is a config group now; write "
                "data=<source> (one of the files in conf/data/) instead"
            )
        if key in valid:
            continue
        if override.is_add() and _parameter_of_target(cfg, key):
            continue
        close = difflib.get_close_matches(key, sorted(valid), n=3, cutoff=0.6)
        hint = f"closest: {', '.join(close)}" if close else "python train.py --cfg job lists them"
        raise IchsegError(f"{override.input_line}: {key} is not a key of the config ({hint})")
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    return _compose(conf_dir, plain)
