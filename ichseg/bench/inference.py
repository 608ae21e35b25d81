"""`ichseg prepare` on a full-size release and `ichseg predict` on a 40-slice scan, timed."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from omegaconf import DictConfig

from ichseg.bench.measure import peak_memory, summarize
from ichseg.config import instantiate_checked
from ichseg.data.prepare import prepare
from ichseg.data.release import read_json_object


def time_prepare(cfg: DictConfig, repeats: int) -> dict:
    """Seconds of `ichseg prepare` as the job config `cfg` prepares its data (the paper's: the
    75-patient 512² synthetic release into a 256² cache), each build into an empty folder after
    one untimed build (which also brings the release's files into the page cache)."""
    datamodule = instantiate_checked(cfg.data)
    start = time.perf_counter()
    release = datamodule.release_dir()
    release_s = time.perf_counter() - start
    scratch = datamodule.cache_root.parent
    scratch.mkdir(parents=True, exist_ok=True)
    times = []
    with peak_memory(torch.device("cpu")) as memory:
        for i in range(repeats + 1):
            with tempfile.TemporaryDirectory(dir=scratch, prefix=".bench-prepare-") as out:
                start = time.perf_counter()
                cache = prepare(datamodule.source, out, datamodule.prepare_config)
                if i:
                    times.append(time.perf_counter() - start)
                counts = read_json_object(cache / "meta.json")["counts"]
    return {
        "release": str(release),
        "release_ready_s": release_s,
        "cache_size": datamodule.prepare_config.size,
        "cache_slices": counts["n_slices"],
        "seconds": summarize(times),
        "memory": memory,
    }


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


def write_checkpoint(path: Path, module_config: DictConfig, size: int) -> None:
    """A checkpoint of the module `module_config` describes (`model.module`), with the keys
    `ichseg predict` reads, plus Adam state."""
    from ichseg.checkpoint import Preprocess, write_checkpoint

    torch.manual_seed(0)
    module = instantiate_checked(module_config)
    optimizer = module.configure_optimizers()["optimizer"]
    module(torch.rand(1, 1, 32, 32)).mean().backward()
    optimizer.step()
    write_checkpoint(
        path,
        module.hparams,
        module.state_dict(),
        preprocess=Preprocess(size=size, level=40.0, width=120.0),
        extra={"optimizer_states": [optimizer.state_dict()]},
    )


# Runs `ichseg ARGS...` in the child, then writes the VmHWM line of its /proc status (its own
# peak RSS; Linux only) to a file. Nothing beyond what `ichseg` imports is imported.
_CLI_WITH_PEAK = (
    "import sys; from ichseg.cli import main; code = main(sys.argv[2:]); "
    "lines = open('/proc/self/status').read().splitlines(); "
    "open(sys.argv[1], 'w').write(''.join(x for x in lines if x.startswith('VmHWM:'))); "
    "sys.exit(code)"
)


def _run_cli(args: list[str], peak_file: Path) -> tuple[float, float | None]:
    """Wall seconds and peak RSS (MiB) of `ichseg ARGS` in a new process, which must succeed."""
    command = [sys.executable, "-c", _CLI_WITH_PEAK, str(peak_file), *args]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if done.returncode:
        stderr = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"ichseg {' '.join(args)} failed ({done.returncode}): {stderr[-500:]}")
    fields = peak_file.read_text().split()  # "VmHWM:", "<n>", "kB"
    return wall, int(fields[1]) / 1024 if len(fields) == 3 else None


def time_predict(
    module_config: DictConfig,
    repeats: int,
    slices: int = 40,
    scan_size: int = 512,
    size: int = 256,
    options: list[str] | tuple = (),
) -> dict:
    """`ichseg predict [options]` of one checkpoint of `module_config` (`model.module`) on a
    synthetic scan, each run a new process: wall time (start-up, imports, reading, prediction,
    writing) and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="ichseg-bench-predict-") as tmp:
        root = Path(tmp)
        scan, ckpt = root / "scan.nii", root / "model.ckpt"
        write_scan(scan, scan_size, slices)
        write_checkpoint(ckpt, module_config, size)
        args = ["predict", str(ckpt), str(scan), "-o", str(root / "out"), *options]
        walls, rss, inner = [], [], []
        for i in range(repeats + 1):
            wall, peak = _run_cli(args, root / "peak")
            if i:
                walls.append(wall)
                rss.append(peak)
                inner.append(json.loads((root / "out" / "scan.json").read_text())["seconds"])
        summary = json.loads((root / "out" / "scan.json").read_text())
    return {
        "scan": f"{slices} slices of {scan_size}x{scan_size}",
        "network_size": size,
        "options": list(options),
        "device": summary["device"],
        "precision": summary["precision"],
        "wall_s": summarize(walls),
        "in_process_s": summarize(inner),
        "memory": {
            "peak_rss_mb": None if None in rss else round(max(rss), 1),
            "rss_scope": "the predict process",
        },
    }
