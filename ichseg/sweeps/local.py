"""Read a sweep folder: each job's config, job state, checkpoint records and history.

A sweep is a Hydra multirun folder (it has `multirun.yaml`) with one `<model>-fold<k>/` folder per
job; a single run's folder (`python train.py`, no -m) is read as a sweep of its one job. Paths a
job recorded relative (an earlier ichseg did) are read against the folder it ran in, so the sweep
reads the same from anywhere.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from ichseg.errors import IchsegError
from ichseg.jobs.records import (
    HISTORY_FILE,
    JOB_FILE,
    MULTIRUN_FILE,
    RECORDS_FILE,
    read_history,
    read_job,
    read_records,
)
from ichseg.paths import absolute, absolute_config_paths, is_relative, relative_config_paths
from ichseg.sweeps.model import (
    CONFIG_FILE,
    NOT_STARTED,
    Job,
    Sweep,
    assemble_sweep,
)

JOB_DIR_PATTERN = re.compile(r"^(?P<model>[A-Za-z0-9_.]+)-fold(?P<fold>\d+)$")


def is_sweep(path: str | Path) -> bool:
    """True when `path` is a folder holding Hydra's `multirun.yaml`."""
    return (Path(path) / MULTIRUN_FILE).is_file()


def latest_sweep(experiments_dir: str | Path) -> Path:
    """The sweep under `experiments_dir` whose multirun.yaml is newest (the last one launched)."""
    root = Path(experiments_dir)
    if not root.is_dir():
        raise IchsegError(f"{root}: experiments folder not found")
    # multirun.yaml is written when a sweep is launched; a folder's own mtime would also move
    # when a report is written into an old sweep, making it look like the latest.
    found = [p for p in root.rglob(MULTIRUN_FILE) if p.is_file()]
    if not found:
        raise IchsegError(f"{root}: no sweep found (no {MULTIRUN_FILE} in any folder below it)")
    return max(found, key=lambda p: p.stat().st_mtime).parent


def load_yaml(path: Path) -> dict:
    """A YAML mapping from `path`; IchsegError naming the file when it is not one."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise IchsegError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise IchsegError(f"{path}: expected a YAML mapping, found {type(data).__name__}")
    return data


def _is_job_dir(path: Path) -> bool:
    """A subfolder is a job when it is named like one or holds one of a job's files."""
    if not path.is_dir() or path.name.startswith("."):
        return False
    if JOB_DIR_PATTERN.match(path.name):
        return True
    return any((path / f).exists() for f in (JOB_FILE, RECORDS_FILE, CONFIG_FILE))


def recorded_cwd(job_dir: Path) -> Path | None:
    """The folder a job ran in, as Hydra recorded it (`hydra.runtime.cwd` of the job's
    `.hydra/hydra.yaml`, else of its sweep's multirun.yaml); None when neither says."""
    for path in (job_dir / ".hydra" / "hydra.yaml", job_dir.parent / MULTIRUN_FILE):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        runtime = (data or {}).get("hydra", {}).get("runtime", {}) if isinstance(data, dict) else {}
        cwd = runtime.get("cwd") if isinstance(runtime, dict) else None
        if isinstance(cwd, str) and Path(cwd).is_absolute():
            return Path(cwd)
    return None


def read_job_state(job_dir: Path) -> dict:
    """The job's job.json ({} before it started), its `cache_dir` absolute."""
    state = read_job(job_dir) or {}
    cache_dir = state.get("cache_dir")
    if is_relative(cache_dir):
        cwd = recorded_cwd(job_dir)
        if cwd is not None:
            state["cache_dir"] = absolute(cache_dir, cwd)
    return state


def read_job_config(job_dir: Path) -> dict:
    """The job's config.yaml ({} when it has none), its folders (`ichseg.paths.CONFIG_PATHS`)
    absolute."""
    path = job_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    config = load_yaml(path)
    if relative_config_paths(config):
        cwd = recorded_cwd(job_dir)
        if cwd is not None:
            absolute_config_paths(config, cwd)
    return config


def read_job_dir(job_dir: Path) -> Job:
    """Read one job folder: job.json, config.yaml, records.jsonl and history.csv."""
    state = read_job_state(job_dir)
    config_path = job_dir / CONFIG_FILE
    config = read_job_config(job_dir)
    match = JOB_DIR_PATTERN.match(job_dir.name)
    model = state.get("model") or config.get("model", {}).get("name")
    fold = state.get("fold", config.get("fold"))
    if model is None and match:
        model = match["model"]
    if fold is None and match:
        fold = int(match["fold"])
    if model is None or fold is None:
        raise IchsegError(
            f"{job_dir}: cannot tell the job's model and fold (expected a folder named "
            f"<model>-fold<k>, or 'model' and 'fold' in {JOB_FILE} or {CONFIG_FILE})"
        )
    records = read_records(job_dir)
    for r in records:
        missing = [k for k in ("epoch", "train", "val") if k not in r]
        if missing:
            raise IchsegError(
                f"{job_dir / RECORDS_FILE}: record {r.get('epoch', '?')} lacks {', '.join(missing)}"
            )
        if (r.get("model", model), r.get("fold", fold)) != (model, fold):
            raise IchsegError(
                f"{job_dir / RECORDS_FILE}: record of epoch {r['epoch']} is for "
                f"{r.get('model')}-fold{r.get('fold')}, expected {model}-fold{fold}"
            )
    return Job(
        model=str(model),
        fold=int(fold),
        status=state.get("status", NOT_STARTED),
        config=config,
        state=state,
        records=records,
        history=read_history(job_dir) if (job_dir / HISTORY_FILE).exists() else [],
        dir=job_dir,
        source=str(config_path) if config else str(job_dir),
    )


def collect_sweep(sweep_dir: str | Path) -> Sweep:
    """Read every job folder of the sweep at `sweep_dir` and work out what is missing."""
    # Absolute: the report records the sweep's and its checkpoints' paths.
    root = Path(absolute(sweep_dir))
    if not root.is_dir():
        raise IchsegError(f"{root}: sweep folder not found")
    if not is_sweep(root) and (root / JOB_FILE).is_file():
        return single_run(root)
    if not is_sweep(root):
        raise IchsegError(
            f"{root}: not a sweep folder (expected Hydra's {MULTIRUN_FILE}) nor a single run's "
            f"folder (expected {JOB_FILE}); run `python train.py ...` to make one"
        )
    jobs = [read_job_dir(p) for p in sorted(root.iterdir()) if _is_job_dir(p)]
    return assemble_sweep(root, load_yaml(root / MULTIRUN_FILE), jobs)


def single_run(job_dir: Path) -> Sweep:
    """A single run's folder (`python train.py`, no -m) as a sweep of its one job."""
    job = read_job_dir(job_dir)
    multirun = {"hydra": {"overrides": {"task": [f"model={job.model}", f"fold={job.fold}"]}}}
    return assemble_sweep(job_dir, multirun, [job])


def read_cache_meta(job: Job) -> dict | None:
    """The prepared cache's meta.json named by the job's `cache_dir`, or None when unreadable."""
    cache_dir = job.state.get("cache_dir")
    if not cache_dir:
        return None
    path = Path(cache_dir) / "meta.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
