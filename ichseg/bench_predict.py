"""Time `ichseg predict` end to end on a synthetic scan: `python -m ichseg.bench_predict`.

Writes a 512×512×40 int16 scan (HU through slope/intercept, like the real release) and a fresh
paper-width D-Unet checkpoint (untrained weights and an Adam state, as a training checkpoint
holds), then runs the `ichseg predict` command in a new process `--runs` times and prints the
median wall time (Python start, imports, checkpoint and scan reading, prediction, writing) next to
the prediction time the summary JSON reports, with the load average: other processes on the
machine slow every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

DUNET_FILTERS = (32, 64, 128, 256, 512)


def write_scan(path: Path, size: int, slices: int, seed: int = 0) -> None:
    """An elliptic 'head' (bone rim, brain, a bright blob) in noise, stored as int16 + scaling."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    r = np.hypot(x / 0.75, y / 0.9)
    base = np.where(r < 0.92, 35.0, np.where(r < 1.0, 1200.0, -1000.0)).astype(np.float32)
    base[(x - 0.2) ** 2 + (y + 0.1) ** 2 < 0.01] = 70.0
    hu = base[:, :, None] + rng.normal(0, 5, (size, size, slices)).astype(np.float32)
    image = nib.Nifti1Image((hu + 1024).astype(np.int16), np.diag([0.45, 0.45, 5.0, 1.0]))
    image.header.set_slope_inter(1.0, -1024.0)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def write_checkpoint(path: Path, size: int) -> None:
    """A paper-width D-Unet checkpoint with the keys `ichseg predict` reads, plus Adam state."""
    from ichseg.training.module import SegmentationModule

    torch.manual_seed(0)
    module = SegmentationModule(filters=DUNET_FILTERS, batch_norm=True, dropout=0.2)
    optimizer = module.configure_optimizers()
    module(torch.rand(1, 1, 32, 32)).mean().backward()
    optimizer.step()
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "optimizer_states": [optimizer.state_dict()],
            "ichseg_preprocess": {"size": size, "level": 40.0, "width": 120.0},
        },
        path,
    )


def main(argv: list[str] | None = None) -> None:
    """Build the inputs, time the runs, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--scan-size", type=int, default=512)
    parser.add_argument("--size", type=int, default=256, help="the network's input size")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="predict options")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scan, ckpt = root / "scan.nii", root / "dunet.ckpt"
        write_scan(scan, args.scan_size, args.slices)
        write_checkpoint(ckpt, args.size)
        command = [sys.executable, "-m", "ichseg.cli", "predict", str(ckpt), str(scan)]
        command += ["-o", str(root / "out"), *args.extra]
        walls, inner = [], []
        load_before = os.getloadavg()
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - start)
            summary = json.loads((root / "out" / "scan.json").read_text())
            inner.append(summary["seconds"])
        load_after = os.getloadavg()
    print(
        f"{args.slices}-slice {args.scan_size}x{args.scan_size} scan, one D-Unet "
        f"{DUNET_FILTERS} at {args.size}x{args.size} on {summary['device']} "
        f"({torch.get_num_threads()} threads, {os.cpu_count()} CPUs), options {args.extra}"
    )
    print(
        f"end to end (new process): median {statistics.median(walls):.2f} s, "
        f"best {min(walls):.2f} s (runs {', '.join(f'{w:.2f}' for w in walls)}); "
        f"read+predict+resize in process: median {statistics.median(inner):.2f} s"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")


if __name__ == "__main__":
    main()
