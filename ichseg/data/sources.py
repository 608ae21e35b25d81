"""Where a CT-ICH release comes from: the data config's `data.source`, one class per source.

A source has a `name` (what `ichseg prepare` records as the cache's source, and the data module
checks it against) and a `release()` that returns the release folder, making it first if the
source can. A new source is one class here and one file in `conf/data/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from ichseg.data.phantom import ensure_phantom


class ReleaseSource(Protocol):
    """What ICHDataModule needs of a data source."""

    name: ClassVar[str]

    def release(self) -> Path:
        """The release folder in the PhysioNet CT-ICH 1.3.1 layout."""
        ...


@dataclass(frozen=True)
class Phantom:
    """The built-in synthetic release, written under `root` on first use."""

    root: str
    patients: int = 75
    size: int = 512
    seed: int = 0
    name: ClassVar[str] = "phantom"

    def release(self) -> Path:
        """`root`, holding this phantom (written now if it does not exist yet)."""
        return ensure_phantom(Path(self.root), self.patients, self.size, self.seed)


@dataclass(frozen=True)
class PhysioNet:
    """A PhysioNet CT-ICH 1.3.1 release downloaded to `root` (restricted data, kept local)."""

    root: str
    name: ClassVar[str] = "physionet"

    def release(self) -> Path:
        """`root`; `ichseg prepare` validates what it holds."""
        return Path(self.root)
