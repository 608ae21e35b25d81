"""`ichseg bench`: every section in one run, a table on stdout, the figures as JSON.

Sections: `train` (real, bare and MONAI-loader paths per model and experiment), `epoch`
(validation and checkpoint writes as shares of an epoch), `jobs` (several jobs on one device),
`prepare` and `predict`. The JSON lands in `<out>/bench-<UTC time>.json`, written atomically.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from ichseg.atomic import atomic_write_text
from ichseg.bench import training
from ichseg.bench.compute import matmul_ceiling, training_flops_per_image
from ichseg.bench.concurrent import run_jobs
from ichseg.bench.experiment import bench_device, compose_job, job_precision, quiet_lightning
from ichseg.bench.inference import time_predict, time_prepare
from ichseg.bench.settings import SCHEMA, BenchSettings
from ichseg.config import project_root
from ichseg.models.network import build_on_meta, parameter_count
from ichseg.training.provenance import code_version, hardware, package_versions


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def bench_case(cfg, device: torch.device, settings: BenchSettings, ceiling: dict) -> dict:
    """Every figure of one (experiment, model): paths, ratios, FLOP rate, epoch shares."""
    size = int(cfg.data.size)
    name = f"{cfg.model.name}@{size}"
    flops = training_flops_per_image(cfg.model.module.net, size)
    case = {
        "experiment": cfg.experiment_name,
        "model": cfg.model.name,
        "size": size,
        "batch_size": int(cfg.data.batch_size),
        "width": float(cfg.model.width),
        "network": str(cfg.model.module.net._target_),
        "parameters": parameter_count(build_on_meta(cfg.model.module.net)),
        "precision": job_precision(cfg, device),
        "flops_per_image": flops,
    }
    timing = settings.timing()
    if "train" in settings.sections:
        _say(f"{name}: real path (DataModule, augmentation, LightningModule, Adam) and bare")
        _say(f"{name}: network on ready tensors, their timed windows alternating")
        case.update(training.real_and_bare(cfg, device, timing))
        _say(f"{name}: MONAI Dataset + DataLoader, {settings.monai_workers} workers")
        case["monai"] = training.monai_path(cfg, device, timing, settings.monai_workers)
        case.update(derived_figures(case, ceiling))
    if "epoch" in settings.sections:
        _say(f"{name}: validation and checkpoint writes")
        case["epoch"] = training.epoch_costs(cfg, device, settings.repeats)
        if "real" in case:
            case["epoch"]["split"] = training.epoch_shares(
                case["epoch"],
                case["real"]["images_per_s"]["median"],
                int(cfg.checkpoint_every),
                float(cfg.last_checkpoint_every_s),
            )
    return {name: case}


def derived_figures(case: dict, ceiling: dict | None) -> dict:
    """Overhead (the median of the paired bare/real ratios), speed-up over MONAI (a ratio of
    medians), achieved TFLOP/s."""
    real = case["real"]["images_per_s"]["median"]
    monai = case["monai"]["images_per_s"]["median"]
    tflops = real * case["flops_per_image"] / 1e12
    out = {
        "overhead_vs_bare": case["pairs"]["median"],
        "speedup_vs_monai_loader": real / monai,
        "achieved_tflops": tflops,
    }
    if ceiling is not None:
        out["fraction_of_matmul_ceiling"] = tflops / ceiling["tflops"]["median"]
    return out


def projection(cases: dict, jobs: dict | None, folds: int, epochs: int) -> dict | None:
    """Hours of the paper's sweep (folds × models × epochs) on this device, from the paper-size
    cases' epoch times; with `jobs`, D-Unet's share divided by the measured multi-job gain."""
    paper = {c["model"]: c for c in cases.values() if c["experiment"] == "paper"}
    if not paper or not all("split" in c.get("epoch", {}) for c in paper.values()):
        return None
    hours = {m: folds * epochs * c["epoch"]["split"]["epoch_s"] / 3600 for m, c in paper.items()}
    out = {
        "folds": folds,
        "epochs": epochs,
        "models": sorted(hours),
        "hours_per_model": hours,
        "hours_one_job_at_a_time": sum(hours.values()),
    }
    if jobs and jobs["model"] in hours and jobs.get("best_gain", 1.0) > 1.0:
        packed = dict(hours)
        packed[jobs["model"]] /= jobs["best_gain"]
        out["hours_with_jobs_per_device"] = sum(packed.values())
        out["jobs_per_device"] = jobs["best_jobs"]
    return out


def bench_jobs(settings: BenchSettings, device: torch.device) -> dict:
    """Total images/s of 1, 2, ... concurrent jobs on the device, and the gain over one job."""
    runs = {}
    for n in settings.jobs_per_device:
        _say(f"{n} concurrent {settings.jobs_model} job(s) ({settings.jobs_experiment})")
        runs[str(n)] = run_jobs(
            n,
            settings.jobs_experiment,
            settings.jobs_model,
            device.type,
            settings.timing(),
            settings.overrides,
        )
    out = {"experiment": settings.jobs_experiment, "model": settings.jobs_model, "runs": runs}
    if "1" in runs:
        base = runs["1"]["total_images_per_s"]
        out["gain"] = {n: r["total_images_per_s"] / base for n, r in runs.items()}
        best = max(out["gain"], key=out["gain"].get)
        out["best_jobs"], out["best_gain"] = int(best), out["gain"][best]
    return out


def run_bench(settings: BenchSettings) -> tuple[dict, Path]:
    """Run the selected sections; return the result and the JSON file it was written to."""
    quiet_lightning()
    device = bench_device(settings.device)
    result: dict = {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(project_root()),
        "packages": package_versions(),
        "hardware": hardware(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "load_average_start": os.getloadavg()[0],
        "settings": asdict(settings),
    }
    timed_training = {"train", "epoch"} & set(settings.sections)
    configs = (
        [
            compose_job(experiment, model, settings.overrides)
            for experiment in settings.experiments
            for model in settings.models
        ]
        if timed_training
        else []
    )
    # After the configs asked for, so that a bad override is reported against one of them.
    paper = compose_job("paper", settings.jobs_model, settings.overrides)
    ceiling = None
    if "train" in settings.sections and configs:
        dtype = (
            torch.bfloat16 if job_precision(configs[-1], device) == "bf16-mixed" else torch.float32
        )
        _say(f"matrix-product ceiling ({dtype})")
        ceiling = matmul_ceiling(device, dtype)
        result["matmul_ceiling"] = ceiling
    cases: dict = {}
    for cfg in configs:
        cases.update(bench_case(cfg, device, settings, ceiling))
    result["training"] = cases
    jobs = bench_jobs(settings, device) if "jobs" in settings.sections else None
    if jobs:
        result["jobs_per_device"] = jobs
    result["paper_sweep"] = projection(
        cases, jobs, folds=int(paper.data.n_folds), epochs=int(paper.trainer.max_epochs)
    )
    if "prepare" in settings.sections:
        _say("ichseg prepare of the paper experiment's release")
        result["prepare"] = time_prepare(paper, settings.repeats)
    if "predict" in settings.sections:
        _say(f"ichseg predict of a paper-width {paper.model.name} on a 40-slice 512² scan")
        result["predict"] = time_predict(
            paper.model.module, settings.repeats, options=settings.predict_options
        )
    result["load_average_end"] = os.getloadavg()[0]
    stamp = result["created"].replace(":", "").replace("+0000", "Z")
    path = Path(settings.out_dir) / f"bench-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return result, path
