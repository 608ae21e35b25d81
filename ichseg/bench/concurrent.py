"""Several training jobs on one device at once: does the device have room for a second job?

Each job is its own process running the real training path (`ichseg.bench.training.real_path`),
as the slot launcher runs them (`hydra.launcher.jobs_per_gpu`, or `cpu_jobs` with the cores
split between them). All start together; the figure is the sum of their images/s.
`python -m ichseg.bench.concurrent` is the worker a job runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from ichseg.bench.measure import summarize
from ichseg.launch.placement import usable_cores


def run_jobs(
    jobs: int,
    experiment: str,
    model: str,
    device: str,
    timing: dict,
    overrides: list[str],
) -> dict:
    """Start `jobs` workers at once on `device`; their images/s, summed, and each one's figures."""
    threads = max(1, usable_cores() // jobs) if device == "cpu" else None
    with tempfile.TemporaryDirectory(prefix="ichseg-bench-jobs-") as tmp:
        outs = [Path(tmp) / f"job{i}.json" for i in range(jobs)]
        children = []
        for out in outs:
            command = [sys.executable, "-m", "ichseg.bench.concurrent", "--out", str(out)]
            command += ["--experiment", experiment, "--model", model, "--device", device]
            command += ["--timing", json.dumps(timing)]
            command += [f"--override={o}" for o in overrides]
            if threads:
                command += ["--threads", str(threads)]
            children.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            )
        errors = [child.communicate()[1].decode(errors="replace") for child in children]
        for child, err in zip(children, errors, strict=True):
            if child.returncode:
                raise RuntimeError(f"bench job failed ({child.returncode}): {err.strip()[-800:]}")
        results = [json.loads(out.read_text()) for out in outs]
    medians = [r["images_per_s"]["median"] for r in results]
    return {
        "jobs": jobs,
        "threads_per_job": threads,
        "total_images_per_s": sum(medians),
        "per_job_images_per_s": [summarize(r["images_per_s"]["values"]) for r in results],
        "per_job_memory": [r["memory"] for r in results],
    }


def main(argv: list[str] | None = None) -> None:
    """Worker: time the real path of one job config and write its result as JSON."""
    parser = argparse.ArgumentParser(description="one job of a jobs-per-device measurement")
    parser.add_argument("--out", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--timing", required=True, help="StepWindows arguments as JSON")
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)

    import torch

    from ichseg.atomic import atomic_write_text
    from ichseg.bench.experiment import bench_device, compose_job, quiet_lightning
    from ichseg.bench.training import real_path

    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_lightning()
    cfg = compose_job(args.experiment, args.model, args.override)
    result = real_path(cfg, bench_device(args.device), json.loads(args.timing))
    atomic_write_text(Path(args.out), json.dumps(result))


if __name__ == "__main__":
    main()
