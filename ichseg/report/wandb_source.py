"""Read a sweep's checkpoint records from the W&B API instead of the sweep folder.

Each job logs to one W&B run in the group `<experiment_name>/<sweep folder name>`: its resolved
config, one `checkpoint/*` row per checkpoint epoch (`checkpoint/epoch`,
`checkpoint/<train|val>_<metric>`, see `ichseg.training.callbacks`) and per-epoch `train/*`,
`val/*` rows. This module turns those into the same `Job`s the folder reader makes, so the rest
of the report is shared. Checkpoint files are not on W&B: a report from this source has no test
evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ichseg.errors import IchsegError
from ichseg.report.collect import Job, Sweep, assemble_sweep

# W&B run states -> job.json statuses.
STATES = {"finished": "done", "running": "running", "crashed": "failed", "failed": "failed"}
CHECKPOINT_PREFIX = "checkpoint/"
SPLITS = ("train", "val")


def _record(row: dict[str, Any], model: str, fold: int) -> dict:
    """A checkpoint record from one logged `checkpoint/*` row (unlogged metrics become null)."""
    record: dict = {"model": model, "fold": fold, "epoch": int(row["checkpoint/epoch"])}
    record["checkpoint"] = None
    for split in SPLITS:
        record[split] = {}
    for key, value in row.items():
        if not key.startswith(CHECKPOINT_PREFIX) or key == "checkpoint/epoch":
            continue
        split, _, metric = key[len(CHECKPOINT_PREFIX) :].partition("_")
        if split in SPLITS and metric:
            record[split][metric] = value
    return record


def _history_row(row: dict[str, Any]) -> dict[str, float] | None:
    """A history.csv row from a logged epoch row; None for rows without train/val metrics."""
    metrics = {k: float(v) for k, v in row.items() if k.split("/")[0] in SPLITS and v is not None}
    if not metrics or "epoch" not in row:
        return None
    # Lightning logs the 0-based trainer epoch; history.csv and records count from 1.
    return {"epoch": float(int(row["epoch"]) + 1), **metrics}


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
        history=[history[e] for e in sorted(history)],
        source=where,
    )


def collect_wandb(project: str, group: str, api: Any = None) -> Sweep:
    """The sweep whose runs are in W&B `project` ("entity/project") and `group`."""
    if api is None:
        import wandb

        api = wandb.Api()
    runs = list(api.runs(project, filters={"group": group}))
    if not runs:
        raise IchsegError(f"W&B {project}: no run in group {group!r}")
    jobs = [job_from_run(run) for run in runs]
    sweep = assemble_sweep(Path(f"wandb:{project}/{group}"), {}, jobs)
    sweep.notes.append(f"Read from W&B project {project}, group {group}; no checkpoint files.")
    return sweep
