"""The system tests' tiny sweep: one real `train.py -m model=unet,dunet fold=0..9` per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.runs import copy_or_link, train


@pytest.fixture(scope="session")
def tiny_sweeps(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny sweep, run once, and a copy of it taken as soon as it finished."""
    root = tmp_path_factory.mktemp("sweep")
    sweep = root / "experiments" / "tiny" / "s1"
    result = train(
        [
            "-m",
            "model=unet,dunet",
            "fold=0..9",
            "experiment=tiny",
            f"hydra.sweep.dir={sweep}",
        ],
        root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Re-launching into the sweep (as some tests do) rewrites files of its jobs.
    frozen = root / "frozen" / "tiny" / "s1"
    shutil.copytree(sweep, frozen, symlinks=True, copy_function=copy_or_link)
    return sweep, frozen


@pytest.fixture(scope="session")
def tiny_sweep(tiny_sweeps) -> Path:
    """The tiny sweep's folder; tests may launch train.py into it again."""
    return tiny_sweeps[0]


@pytest.fixture(scope="session")
def finished_sweep(tiny_sweeps) -> Path:
    """The tiny sweep as it finished, for tests that only read it or write reports into it."""
    return tiny_sweeps[1]
