"""Fixtures both unit and system tests use."""

from __future__ import annotations

from pathlib import Path

import pytest

from ichseg.data.phantom import write_phantom
from tests.helpers.checkpoints import PRE64, passthrough_module, random_module, save_checkpoint


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A small synthetic release in the real layout (12 patients, 32 x 32 slices)."""
    return write_phantom(tmp_path_factory.mktemp("phantom") / "release", patients=12, size=32)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """The pass-through network at 64 and 32 px, two random networks and a mirrored one."""
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "pass": save_checkpoint(passthrough_module(), root / "pass.ckpt", PRE64),
        "pass32": save_checkpoint(passthrough_module(), root / "pass32.ckpt"),
        "a": save_checkpoint(random_module(0), root / "a.ckpt"),
        "b": save_checkpoint(random_module(1), root / "b.ckpt"),
        "sym": save_checkpoint(random_module(2, symmetric=True), root / "sym.ckpt"),
    }
