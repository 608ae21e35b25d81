"""The sweep as the report sees it, whatever source it was read from.

Every source (`local`, `wandb_api`, `wandb_offline`) only builds plain `Job`s; `assemble_sweep`
works out from them and the sweep's `multirun.yaml` what is expected and what is missing, so
the rest of the report is shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from ichseg.config_schema import check_keys
from ichseg.errors import IchsegError
from ichseg.jobs.records import MULTIRUN_FILE
from ichseg.metrics import METRICS_VERSION

CONFIG_FILE = "config.yaml"
# A job that has not written job.json yet (or never will) has no status of its own.
NOT_STARTED = "not started"
_MISSING = object()
# job.json's `trained_by` of a job ichseg trained itself (with checkpoints behind its records).
ICHSEG = "ichseg"
# An imported job's test-split probabilities, (slices, H, W) float, in its folder.
IMPORTED_TEST_FILE = "test_probabilities.npy"


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

    @property
    def display_name(self) -> str:
        """How the report names the job's model: its config's `model.display_name`, or `model`."""
        return str(self.get("model.display_name", None) or self.model)

    @property
    def trained_by(self) -> str:
        """What trained the job (job.json's `trained_by`): ichseg, or the tool it was imported
        from, in which case no ichseg checkpoint stands behind its records."""
        return str(self.state.get("trained_by") or ICHSEG)

    @property
    def imported(self) -> bool:
        """Whether the job was trained outside ichseg and imported (no checkpoint behind it)."""
        return self.trained_by != ICHSEG

    @property
    def imported_test_file(self) -> Path | None:
        """The test-split probabilities an imported job came with (`IMPORTED_TEST_FILE`), or
        None."""
        path = self.dir / IMPORTED_TEST_FILE if self.dir is not None and self.imported else None
        return path if path is not None and path.is_file() else None

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
    check_keys({"trainer.max_epochs": max_epochs, "checkpoint_every": checkpoint_every})
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
    # Model -> how the report names it (`Job.display_name` of its first job).
    names: dict[str, str] = field(default_factory=dict)
    # What was left out of the sweep as it was read (a truncated W&B run file), for stderr.
    warnings: list[str] = field(default_factory=list)

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


def _model_order(jobs: list[Job]) -> dict[str, tuple[float, str]]:
    """Sort key of each model the sweep's override does not list: its config's `model.order`
    (lower first; none: last), then its name."""
    order: dict[str, tuple[float, str]] = {}
    for job in jobs:
        value = job.get("model.order", None)
        rank = (
            float(value)
            if isinstance(value, int | float) and not isinstance(value, bool)
            else math.inf
        )
        order[job.model] = min(order.get(job.model, (math.inf, job.model)), (rank, job.model))
    return order


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
    order = _model_order(jobs)
    models += sorted({j.model for j in jobs} - set(models), key=order.__getitem__)

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
        names={m: next((j.display_name for j in ordered if j.model == m), m) for m in models},
    )
