"""Read a sweep's checkpoint records from the W&B API instead of the sweep folder.

Each job logs to one W&B run in the group `<experiment_name>/<sweep folder name>`: its resolved
config, one `checkpoint/*` row per checkpoint epoch (`checkpoint/epoch`,
`checkpoint/<train|val>_<metric>`, see `ichseg.training.callbacks`) and per-epoch `train/*`,
`val/*` rows. This module turns those into the same `Job`s the folder reader makes, so the rest
of the report is shared. Checkpoint files are not on W&B: a report from this source has no test
evaluation.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ichseg.errors import IchsegError
from ichseg.metrics import stage_keys
from ichseg.sweeps.model import Job, Sweep, assemble_sweep

# W&B run states -> job.json statuses.
STATES = {"finished": "done", "running": "running", "crashed": "failed", "failed": "failed"}
CHECKPOINT_PREFIX = "checkpoint/"
VERSION_KEY = "checkpoint/metrics_version"
COLLAPSED_KEY = "checkpoint/collapsed"
SPLITS = ("train", "val")
# The job type of the run `ichseg report` logs into the sweep's group: not a job of the sweep.
REPORT_JOB_TYPE = "report"
# Seconds per HTTP request: without a network the API must fail in seconds, not retry for minutes.
API_TIMEOUT_S = 10


def _record(row: dict[str, Any], model: str, fold: int) -> dict:
    """A checkpoint record from one logged `checkpoint/*` row (unlogged metrics become null)."""
    record: dict = {"model": model, "fold": fold, "epoch": int(row["checkpoint/epoch"])}
    record["checkpoint"] = None
    for split in SPLITS:
        record[split] = {}
    if row.get(VERSION_KEY) is not None:
        record["metrics_version"] = int(row[VERSION_KEY])
    for key, value in row.items():
        if not key.startswith(CHECKPOINT_PREFIX) or key in (
            "checkpoint/epoch",
            VERSION_KEY,
            COLLAPSED_KEY,
        ):
            continue
        split, _, metric = key[len(CHECKPOINT_PREFIX) :].partition("_")
        if split in SPLITS and metric:
            record[split][metric] = value
    for split in SPLITS:
        # Undefined metrics are not logged; records.jsonl holds them as null.
        for metric in stage_keys(split):
            record[split].setdefault(metric, None)
    if row.get(COLLAPSED_KEY) is not None:
        record["collapsed"] = bool(row[COLLAPSED_KEY])
    return record


def _history_row(row: dict[str, Any]) -> dict[str, float] | None:
    """A history.csv row from a logged epoch row; None for rows without train/val metrics."""
    metrics = {k: float(v) for k, v in row.items() if k.split("/")[0] in SPLITS and v is not None}
    if not metrics or "epoch" not in row:
        return None
    # Lightning logs the 0-based trainer epoch; history.csv and records count from 1.
    return {"epoch": float(int(row["epoch"]) + 1), **metrics}


def _with_undefined(row: dict[str, float]) -> dict[str, float]:
    """A merged epoch row with NaN for every metric the run did not log (undefined that epoch),
    as history.csv holds them."""
    for split in SPLITS:
        for metric in ("loss", *stage_keys(split)):
            row.setdefault(f"{split}/{metric}", math.nan)
    return row


def job_from_run(run: Any) -> Job:
    """One `Job` from a W&B run (anything with `config`, `state`, `path`, `scan_history()`)."""
    config = dict(run.config)
    where = f"W&B run {'/'.join(run.path)}"
    try:
        model, fold = str(config["model"]["name"]), int(config["fold"])
    except (KeyError, TypeError, ValueError):
        raise IchsegError(f"{where}: config lacks model.name or fold") from None
    records: dict[int, dict] = {}
    history: dict[int, dict[str, float]] = {}
    for row in run.scan_history():
        if row.get("checkpoint/epoch") is not None:
            record = _record(row, model, fold)
            records[record["epoch"]] = record
        entry = _history_row(row)
        if entry is not None:
            history.setdefault(int(entry["epoch"]), {}).update(entry)
    return Job(
        model=model,
        fold=fold,
        status=STATES.get(run.state, run.state),
        config=config,
        state={"wandb_run": "/".join(run.path), "started": str(getattr(run, "created_at", ""))},
        records=[records[e] for e in sorted(records)],
        history=[_with_undefined(history[e]) for e in sorted(history)],
        source=where,
    )


def merge_jobs(runs: list[tuple[str, Job]]) -> list[Job]:
    """One `Job` per (model, fold) from `(created_at, job)` pairs: a resumed job logs a second
    run, whose records and history rows replace the earlier run's for the same epochs."""
    by_key: dict[tuple[str, int], list[tuple[str, Job]]] = {}
    for created, job in runs:
        by_key.setdefault((job.model, job.fold), []).append((created, job))
    merged = []
    for parts in by_key.values():
        jobs = [job for _, job in sorted(parts, key=lambda p: p[0])]
        last = jobs[-1]
        if len(jobs) > 1:
            records = {r["epoch"]: r for job in jobs for r in job.records}
            history: dict[float, dict[str, float]] = {}
            for job in jobs:
                for row in job.history:
                    history.setdefault(row["epoch"], {}).update(row)
            last.records = [records[e] for e in sorted(records)]
            last.history = [history[e] for e in sorted(history)]
            last.state = {**last.state, "wandb_runs": [j.state.get("wandb_run") for j in jobs]}
            last.state["started"] = jobs[0].state.get("started", "")
        merged.append(last)
    return merged


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """`call()`, or TimeoutError after `seconds`: wandb retries timed-out requests internally,
    so its per-request timeout alone does not bound how long a silent server can hold us."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def collect_wandb(project: str, group: str, api: Any = None, timeout: int | None = None) -> Sweep:
    """The sweep whose runs are in W&B `project` ("entity/project") and `group`."""
    timeout = API_TIMEOUT_S if timeout is None else timeout
    entity, _, name = project.partition("/")
    if not entity or not name or "/" in name:
        raise IchsegError(f"W&B project {project!r}: expected entity/project")
    import wandb

    try:
        client = api if api is not None else wandb.Api(timeout=timeout)
        # The first contact is where a silent server hangs; bound it as a whole.
        runs = within(3 * timeout, lambda: list(client.runs(project, filters={"group": group})))
        runs = [run for run in runs if getattr(run, "job_type", None) != REPORT_JOB_TYPE]
        found = [(str(getattr(run, "created_at", "")), job_from_run(run)) for run in runs]
    except (wandb.errors.Error, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise IchsegError(
            f"W&B {project}, group {group!r}: the W&B API cannot be read ({reason}); "
            f"check the network and `wandb login`, or report from the sweep folder"
        ) from None
    if not runs:
        raise IchsegError(f"W&B {project}: no run in group {group!r}")
    sweep = assemble_sweep(Path(f"wandb:{project}/{group}"), {}, merge_jobs(found))
    sweep.notes.append(f"Read from W&B project {project}, group {group}; no checkpoint files.")
    return sweep
