"""Find a sweep's jobs and read what each wrote: config, job state, checkpoint records, history.

A sweep is a Hydra multirun folder (it has `multirun.yaml`) with one `<model>-fold<k>/` folder per
job. Reading is split from assembling: `collect_sweep` reads the files, `assemble_sweep` works out
what is expected and what is missing from plain `Job` objects, so another source (e.g. the W&B
API) only has to build `Job`s to reuse the rest of the report.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from ichseg.errors import IchsegError
from ichseg.metrics import METRICS_VERSION
from ichseg.training.records import (
    HISTORY_FILE,
    JOB_FILE,
    RECORDS_FILE,
    read_history,
    read_job,
    read_records,
)

MULTIRUN_FILE = "multirun.yaml"
CONFIG_FILE = "config.yaml"
JOB_DIR_PATTERN = re.compile(r"^(?P<model>[A-Za-z0-9_.]+)-fold(?P<fold>\d+)$")
# A job that has not written job.json yet (or never will) has no status of its own.
NOT_STARTED = "not started"
_MISSING = object()
# Models the sweep does not list are ordered baseline first, so comparisons read D-Unet - U-Net.
MODEL_ORDER = ("unet_plain", "unet", "dunet")


def config_get(config: dict, key: str, where: str) -> Any:
    """Value of a dotted `key` in a nested config dict; IchsegError naming `where` when absent."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise IchsegError(f"{where}: config key '{key}' is missing")
        node = node[part]
    return node


@dataclass
class Job:
    """One (model, fold) job as the report sees it, whatever source it was read from."""

    model: str
    fold: int
    status: str
    config: dict
    state: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    dir: Path | None = None
    source: str = ""

    @property
    def name(self) -> str:
        """The job's folder name, `<model>-fold<k>`."""
        return f"{self.model}-fold{self.fold}"

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """A dotted config value; IchsegError naming the job's config when it is missing."""
        try:
            return config_get(self.config, key, self.source or self.name)
        except IchsegError:
            if default is _MISSING:
                raise
            return default

    def record(self, epoch: int) -> dict | None:
        """This job's checkpoint record at `epoch`, or None."""
        return next((r for r in self.records if r["epoch"] == epoch), None)

    def expected_epochs(self) -> list[int]:
        """Checkpoint epochs this job should record: every checkpoint_every-th, plus the last."""
        return expected_epochs(
            int(self.get("trainer.max_epochs")), int(self.get("checkpoint_every"))
        )


def expected_epochs(max_epochs: int, checkpoint_every: int) -> list[int]:
    """Epochs 1-based as counted by the records: every `checkpoint_every`-th and the final one."""
    if max_epochs < 1 or checkpoint_every < 1:
        raise IchsegError(
            f"trainer.max_epochs and checkpoint_every must be >= 1, found "
            f"{max_epochs} and {checkpoint_every}"
        )
    return sorted({*range(checkpoint_every, max_epochs + 1, checkpoint_every), max_epochs})


@dataclass
class Sweep:
    """All jobs of one sweep plus what was expected of it and is not there."""

    root: Path
    multirun: dict
    jobs: list[Job]
    models: list[str]
    expected_folds: list[int]
    folds_from: str  # where expected_folds came from, said in the report
    missing_jobs: list[tuple[str, int]]
    missing_records: list[tuple[str, int, int]]
    notes: list[str]

    def jobs_of(self, model: str) -> list[Job]:
        """The jobs of one model, by fold."""
        return [j for j in self.jobs if j.model == model]

    def job(self, model: str, fold: int) -> Job | None:
        """The job of (model, fold), or None when it is missing."""
        return next((j for j in self.jobs if j.model == model and j.fold == fold), None)

    @property
    def unfinished(self) -> list[Job]:
        """Jobs whose status is not `done` (running, interrupted, failed or never started)."""
        return [j for j in self.jobs if j.status != "done"]

    def epochs(self, model: str) -> list[int]:
        """Every epoch that any job of `model` recorded or was expected to record."""
        found = {r["epoch"] for j in self.jobs_of(model) for r in j.records}
        found |= {e for m, _, e in self.missing_records if m == model}
        return sorted(found)


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


def _load_yaml(path: Path) -> dict:
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


def read_job_dir(job_dir: Path) -> Job:
    """Read one job folder: job.json, config.yaml, records.jsonl and history.csv."""
    state = read_job(job_dir) or {}
    config_path = job_dir / CONFIG_FILE
    config = _load_yaml(config_path) if config_path.is_file() else {}
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
    root = Path(sweep_dir)
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
    return assemble_sweep(root, _load_yaml(root / MULTIRUN_FILE), jobs)


def single_run(job_dir: Path) -> Sweep:
    """A single run's folder (`python train.py`, no -m) as a sweep of its one job."""
    job = read_job_dir(job_dir)
    multirun = {"hydra": {"overrides": {"task": [f"model={job.model}", f"fold={job.fold}"]}}}
    return assemble_sweep(job_dir, multirun, [job])


def _sweep_values(multirun: dict, key: str) -> list | None:
    """The values the sweep gave `key` (command-line overrides or sweeper params), parsed with
    Hydra's own override grammar; None when the sweep did not set it or it cannot be parsed."""
    hydra = multirun.get("hydra") or {}
    overrides = [str(o) for o in (hydra.get("overrides") or {}).get("task") or []]
    params = (hydra.get("sweeper") or {}).get("params") or {}
    overrides += [f"{k}={v}" for k, v in params.items()]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        return None
    values = None
    for override in parsed:
        if override.key_or_group == key and not override.is_delete():
            if override.is_sweep_override():
                values = list(override.sweep_iterator())
            else:
                values = [override.value()]
    return values


def _model_order(model: str) -> tuple[int, str]:
    """Sort key: known models in MODEL_ORDER, then the others by name."""
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER), model)


def _first(jobs: list[Job], key: str, multirun: dict) -> Any:
    """A config value from the first job that has it, else from multirun.yaml, else None."""
    for job in jobs:
        value = job.get(key, None)
        if value is not None:
            return value
    try:
        return config_get(multirun, key, MULTIRUN_FILE)
    except IchsegError:
        return None


def check_metrics_version(job: Job) -> None:
    """Refuse records whose metric keys meant something else when they were written."""
    for record in job.records:
        version = record.get("metrics_version")
        if version == METRICS_VERSION:
            continue
        if version is None:
            meaning = (
                "it predates metrics_version, when 'dice_paper' was a thresholded smooth-1 "
                "batch Dice, not Table 1's soft metric"
            )
        else:
            meaning = f"it has metrics_version {version}, this ichseg reads {METRICS_VERSION}"
        raise IchsegError(
            f"{job.source or job.name}: the record of epoch {record.get('epoch')} cannot be "
            f"read ({meaning}); re-run the job to score it under the current protocols"
        )


def assemble_sweep(root: Path, multirun: dict, jobs: list[Job]) -> Sweep:
    """Build a Sweep from jobs of any source: expected models/folds/epochs and what is missing."""
    seen: dict[tuple[str, int], Job] = {}
    for job in jobs:
        check_metrics_version(job)
        key = (job.model, job.fold)
        if key in seen:
            raise IchsegError(
                f"{root}: two jobs claim {job.name}: {seen[key].dir or seen[key].source} and "
                f"{job.dir or job.source}"
            )
        seen[key] = job
    notes: list[str] = []
    models = list(dict.fromkeys(str(m) for m in _sweep_values(multirun, "model") or []))
    models += sorted({j.model for j in jobs} - set(models), key=_model_order)

    n_folds = _first(jobs, "data.n_folds", multirun)
    fold_values = _sweep_values(multirun, "fold")
    if fold_values and all(isinstance(v, int) and not isinstance(v, bool) for v in fold_values):
        expected_folds = sorted({int(v) for v in fold_values})
        folds_from = f"the sweep's fold override ({', '.join(map(str, expected_folds))})"
    elif n_folds is not None:
        expected_folds = list(range(int(n_folds)))
        folds_from = f"data.n_folds = {n_folds}"
    else:
        expected_folds = sorted({j.fold for j in jobs})
        folds_from = "the job folders found (no data.n_folds in any config)"
        notes.append("No config gives data.n_folds: expected folds are only those found.")
    if n_folds is not None and len(expected_folds) < int(n_folds):
        notes.append(
            f"The sweep ran {len(expected_folds)} of data.n_folds = {n_folds} folds; "
            f"means are over those folds only."
        )

    missing_jobs = [(m, f) for m in models for f in expected_folds if (m, f) not in seen]
    missing_records: list[tuple[str, int, int]] = []
    configured = [j for j in jobs if j.config]
    for model in models:
        # A model none of whose jobs started yet is expected to record what the others do.
        with_config = [j for j in configured if j.model == model] or configured
        for job in sorted((j for j in jobs if j.model == model), key=lambda j: j.fold):
            if not job.config:
                notes.append(f"{job.name}: no {CONFIG_FILE}; its expected epochs are unknown.")
                continue
            have = {r["epoch"] for r in job.records}
            missing_records += [
                (model, job.fold, e) for e in job.expected_epochs() if e not in have
            ]
        if with_config:
            template = with_config[0].expected_epochs()
            missing_records += [(m, f, e) for m, f in missing_jobs if m == model for e in template]
    ordered = sorted(jobs, key=lambda j: (models.index(j.model), j.fold))
    return Sweep(
        root=root,
        multirun=multirun,
        jobs=ordered,
        models=models,
        expected_folds=expected_folds,
        folds_from=folds_from,
        missing_jobs=missing_jobs,
        missing_records=sorted(missing_records, key=lambda t: (models.index(t[0]), t[1], t[2])),
        notes=notes,
    )


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
