"""Command-line sweep syntax checked before Hydra sees it.

Hydra reads `fold=0..9` as the string "0..9" (a plain app then runs two jobs, not twenty).
`expand_ranges` turns every `key=a..b` into Hydra's `key=range(a,b+1)` (inclusive, as a
researcher reads it), and `check_overrides` rejects folds and models that cannot run, with one
line, before a single job starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from ichseg.config_schema import SCHEMA, check_value
from ichseg.errors import IchsegError

RANGE = re.compile(r"^(?P<key>[+~]{0,2}[\w.\-/@]+)=(?P<a>-?\d+)\.\.(?P<b>-?\d+)$")
MULTIRUN_FLAGS = ("-m", "--multirun")


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
    """Reject `fold` values outside 0..n_folds-1 or not integers, and unknown `model=` names."""
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        return  # Hydra reports its own syntax errors, with the offending override.
    n_folds = 10
    for override in parsed:
        if override.key_or_group == "data.n_folds" and not override.is_sweep_override():
            n_folds = override.value()
            check_value("data.n_folds", n_folds, SCHEMA["data.n_folds"])
    folders = [conf_dir, *_searchpath_folders(parsed)]
    models = sorted({p.stem for folder in folders for p in (folder / "model").glob("*.yaml")})
    for override in parsed:
        if override.is_delete():
            continue
        if override.key_or_group == "fold":
            for value in _override_values(override):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise IchsegError(f"fold={value} is not an integer: expected 0..{n_folds - 1}")
                if not 0 <= value < n_folds:
                    raise IchsegError(f"fold={value} is out of range: expected 0..{n_folds - 1}")
        elif override.key_or_group == "model":
            for value in _override_values(override):
                if value not in models:
                    raise IchsegError(
                        f"model={value} is unknown: expected one of {', '.join(models)} "
                        f"(files in {', '.join(str(f / 'model') for f in folders)})"
                    )
