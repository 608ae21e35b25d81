"""train.py run as a user runs it, in a subprocess, and copies of the sweeps it writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAST = "checkpoints/last.ckpt"
TINY = ["-m", "fold=1", "experiment=tiny", "deterministic=true", "logger=none", "num_threads=1"]


def train(
    args: list[str], root: Path, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run train.py as a user would, with data and experiments under `root` (and `env` added
    to the environment)."""
    env = {
        **os.environ,
        "ICHSEG_ROOT": str(root),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=timeout,
    )


def launch(root: Path, sweep: Path, *extra: str, model: str = "dunet") -> subprocess.Popen:
    """Start `train.py -m` on the tiny experiment; output goes to files next to the sweep."""
    sweep.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ICHSEG_ROOT": str(root), "WANDB_MODE": "disabled"}
    args = [*TINY, f"model={model}", f"hydra.sweep.dir={sweep}", *extra]
    with open(f"{sweep}.out", "w") as out, open(f"{sweep}.err", "w") as err:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args],
            cwd=root,
            env=env,
            stdout=out,
            stderr=err,
        )


def finish(proc: subprocess.Popen, sweep: Path, timeout: int = 300) -> tuple[int, str]:
    """Wait for a launched run; its exit status and stderr."""
    code = proc.wait(timeout)
    return code, Path(f"{sweep}.err").read_text()


def copy_or_link(src: str, dst: str) -> None:
    """Checkpoints are only ever replaced by rename, so a hard link stays a faithful copy."""
    if src.endswith(".ckpt"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)
