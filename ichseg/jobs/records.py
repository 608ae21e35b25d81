"""Per-job result files: checkpoint records (Table 1 is built from them), history, job state.

A job directory `<sweep>/<model>-fold<k>/` holds
- `records.jsonl`: one JSON object per checkpoint epoch
  `{"model", "fold", "epoch", "checkpoint", "train": {metric: value}, "val": {metric: value}}`;
- `history.csv`: one row per epoch, `epoch` then `train/<metric>` and `val/<metric>` columns;
- `job.json`: `{"model", "fold", "status", "config_hash", ...}`, status one of "running", "done",
  "failed", "preempted" (SIGTERM) or "interrupted" (SIGINT).
Every file is rewritten whole and renamed into place, so readers never see half a row, and a
record for an epoch that is written again (after a resume) replaces the old one instead of
duplicating it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ichseg.atomic import atomic_write_text
from ichseg.errors import IchsegError

RECORDS_FILE = "records.jsonl"
HISTORY_FILE = "history.csv"
JOB_FILE = "job.json"
# Hydra's record of a sweep's command, in the sweep folder above its jobs.
MULTIRUN_FILE = "multirun.yaml"


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: store an undefined metric (e.g. lesion Dice without lesions) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


def read_records(job_dir: str | Path) -> list[dict]:
    """Checkpoint records of one job, sorted by epoch; [] when the job wrote none yet."""
    path = Path(job_dir) / RECORDS_FILE
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise IchsegError(f"{path}:{n}: not a JSON record ({exc.msg})") from None
    return sorted(rows, key=lambda r: r["epoch"])


def upsert_record(job_dir: str | Path, record: dict) -> None:
    """Add `record`, replacing any record of the same epoch, and rewrite the file atomically."""
    rows = [r for r in read_records(job_dir) if r["epoch"] != record["epoch"]]
    rows.append(_finite_or_none(record))
    rows.sort(key=lambda r: r["epoch"])
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    atomic_write_text(Path(job_dir) / RECORDS_FILE, text)


def read_history(job_dir: str | Path) -> list[dict[str, float]]:
    """Per-epoch metrics of one job as a list of rows (floats; NaN where undefined)."""
    path = Path(job_dir) / HISTORY_FILE
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {k: float(v) if v != "" else math.nan for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def upsert_history(job_dir: str | Path, row: dict[str, float]) -> None:
    """Add one epoch's row (replacing a row of the same epoch) and rewrite the file atomically."""
    rows = [r for r in read_history(job_dir) if int(r["epoch"]) != int(row["epoch"])]
    rows.append({k: float(v) for k, v in row.items()})
    rows.sort(key=lambda r: r["epoch"])
    columns = ["epoch", *sorted({k for r in rows for k in r} - {"epoch"})]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        out = {k: ("" if math.isnan(r.get(k, math.nan)) else repr(r[k])) for k in columns}
        out["epoch"] = int(r["epoch"])
        writer.writerow(out)
    atomic_write_text(Path(job_dir) / HISTORY_FILE, buffer.getvalue())


def read_job(job_dir: str | Path) -> dict | None:
    """The job's state file, or None when the job never started."""
    path = Path(job_dir) / JOB_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IchsegError(f"{path}: not a JSON job file ({exc.msg})") from None


def write_job(job_dir: str | Path, state: dict) -> None:
    """Write the job's state file atomically."""
    text = json.dumps(_finite_or_none(state), indent=2, sort_keys=True) + "\n"
    atomic_write_text(Path(job_dir) / JOB_FILE, text)
