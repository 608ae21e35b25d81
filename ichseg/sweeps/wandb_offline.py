"""Read a sweep's W&B offline run files (`<job>/wandb/offline-run-*/run-*.wandb`) as W&B runs.

An offline run file is W&B's transaction log: a 7-byte header (`:W&B`, magic 0xBEE1, version 0)
and then LevelDB-log framing (32 KiB blocks; each chunk `crc32 uint32, length uint16, type uint8`
and its bytes; a record is one FULL chunk or FIRST, MIDDLE..., LAST) around serialized
`wandb_internal_pb2.Record` messages. wandb 0.31 writes it from Go and no longer ships a Python
reader, so the framing is read here. Each run becomes an object that `job_from_run` reads like an
API run, so this source yields the same `Job`s the W&B API source does: the report path that needs
the network can be checked where the network is not reachable.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ichseg.errors import IchsegError, first_line
from ichseg.jobs.records import MULTIRUN_FILE
from ichseg.sweeps.local import load_yaml
from ichseg.sweeps.model import Sweep, assemble_sweep
from ichseg.sweeps.wandb_api import REPORT_JOB_TYPE, job_from_run, merge_jobs

RUN_FILES = "*/wandb/offline-run-*/run-*.wandb"
# Every W&B run a sweep folder holds a transaction log of, offline or online (`run-*` folders of
# online runs hold one too): its jobs' runs and, in `<sweep>/wandb/`, its report runs.
SWEEP_RUN_FILES = ("*/wandb/*run-*/run-*.wandb", "wandb/*run-*/run-*.wandb")
HEADER = struct.Struct("<4sHB")
HEADER_FIELDS = (b":W&B", 0xBEE1, 0)
CHUNK = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class TruncatedRunFile(IchsegError):
    """A run file whose last record is cut short: its job was killed while W&B wrote it."""


def read_log(path: Path) -> Iterator[bytes]:
    """The records of a W&B transaction log, in order; after the complete ones,
    `TruncatedRunFile` when the last is torn (a killed job)."""
    data = path.read_bytes()
    if len(data) < HEADER.size and HEADER.pack(*HEADER_FIELDS).startswith(data):
        raise TruncatedRunFile(
            f"{path}: truncated at byte {len(data)}, inside its header (its job was killed as "
            "W&B started it)"
        )
    if len(data) < HEADER.size or HEADER.unpack_from(data) != HEADER_FIELDS:
        raise IchsegError(f"{path}: not a W&B run file (expected the ':W&B' version 0 header)")
    pos, pending = HEADER.size, None
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left
            continue
        start = pos + CHUNK.size
        if start + length > len(data):
            break
        chunk = data[start : start + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise IchsegError(f"{path}: corrupt record at byte {pos} (checksum mismatch)")
        pos = start + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind in (MIDDLE, LAST) and pending is not None:
            pending += chunk
            if kind == LAST:
                yield pending
                pending = None
        else:
            raise IchsegError(f"{path}: unexpected record chunk type {kind} at byte {pos}")
    if pending is not None or any(data[pos:]):
        raise TruncatedRunFile(
            f"{path}: truncated at byte {len(data)} in the middle of a record (its job was "
            "killed while W&B wrote it, or is writing it now)"
        )


def _key(item: Any) -> list[str]:
    """The key path of a config/history item: `key`, or `nested_key` for nested values."""
    return [item.key] if item.key else list(item.nested_key)


def _set(config: dict, path: list[str], value: Any) -> None:
    """Set a (possibly nested) config key, as W&B merges config updates."""
    node = config
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _remove(config: dict, path: list[str]) -> None:
    """Remove a (possibly nested) key, as W&B applies a config or summary removal."""
    *head, last = path
    node = config
    for part in head:
        node = node.get(part) or {}
    node.pop(last, None)


@dataclass
class OfflineRun:
    """One offline run with the attributes `job_from_run` reads from an API run.

    History rows and the summary hold a logged dict (a table's or an image's reference, such as
    `{"_type": "table-file", "path": ...}`) as a dict, as the API gives them.
    """

    path: tuple[str, ...]
    config: dict = field(default_factory=dict)
    state: str = "running"
    created_at: str = ""
    group: str = ""
    project: str = ""
    entity: str = ""
    job_type: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def scan_history(self) -> Iterator[dict[str, Any]]:
        """The logged rows in order, like `wandb.apis.public.Run.scan_history`."""
        return iter(self.rows)

    def table(self, key: str) -> tuple[list[str], list[list[Any]]]:
        """The columns and rows of the last `wandb.Table` logged under `key`, read from the
        run's `files/` folder, where W&B saved it."""
        where = f"{self.path[0]}: table {key!r}"
        logged = [row[key] for row in self.rows if isinstance(row.get(key), dict)]
        if not logged or logged[-1].get("_type") != "table-file":
            raise IchsegError(f"{where}: not logged in this run")
        path = Path(self.path[0]).parent / "files" / logged[-1]["path"]
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise IchsegError(f"{where}: {path} unreadable ({first_line(exc)})") from None
        return table["columns"], table["data"]


def read_offline_run(path: str | Path) -> OfflineRun:
    """An `OfflineRun` from one `run-*.wandb` file: config, history rows, group, final state."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    run = OfflineRun(path=(str(path),))
    for raw in read_log(path):
        record = pb.Record()
        try:
            record.ParseFromString(raw)
        except DecodeError as exc:
            raise IchsegError(f"{path}: unreadable W&B record ({exc})") from None
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.group = record.run.run_group
            run.project, run.entity = record.run.project, record.run.entity
            run.job_type = record.run.job_type
            started = record.run.start_time.ToDatetime(timezone.utc)
            if started > datetime.fromtimestamp(0, timezone.utc):
                run.created_at = started.isoformat()
            updates, removes = record.run.config.update, record.run.config.remove
        elif kind == "config":
            updates, removes = record.config.update, record.config.remove
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, _key(item), json.loads(item.value_json))
            run.rows.append(row)
            continue
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, _key(item), json.loads(item.value_json))
            for item in record.summary.remove:
                _remove(run.summary, _key(item))
            continue
        elif kind == "exit":
            run.state = "finished" if record.exit.exit_code == 0 else "failed"
            continue
        else:
            continue
        for item in updates:
            _set(run.config, _key(item), json.loads(item.value_json))
        for item in removes:
            _remove(run.config, _key(item))
    # The API leaves W&B's own bookkeeping out of a run's config.
    run.config = {k: v for k, v in run.config.items() if not k.startswith("_wandb")}
    job = run.job_type != REPORT_JOB_TYPE
    if run.state == "running" and job and not {"model", "fold"} <= run.config.keys():
        raise TruncatedRunFile(
            f"{path}: ends before the job's config, without an exit record (its job was killed "
            "as W&B started it)"
        )
    return run


def collect_wandb_offline(sweep_dir: str | Path) -> Sweep:
    """The sweep as the W&B API would give it, read from its jobs' offline run files."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise IchsegError(f"{root}: sweep folder not found")
    files = sorted(root.glob(RUN_FILES))
    if not files:
        raise IchsegError(f"{root}: no W&B offline run file ({RUN_FILES}); was logger=wandb on?")
    runs, skipped = [], []
    for path in files:
        try:
            runs.append(read_offline_run(path))
        except TruncatedRunFile as exc:
            skipped.append(f"{exc}; its job is left out")
    runs = [run for run in runs if run.job_type != REPORT_JOB_TYPE]
    jobs = merge_jobs([(run.created_at, job_from_run(run)) for run in runs])
    # The sweep's own record of its command: which folds it expects.
    multirun = root / MULTIRUN_FILE
    sweep = assemble_sweep(root, load_yaml(multirun) if multirun.is_file() else {}, jobs)
    groups = ", ".join(sorted({r.group for r in runs if r.group})) or "none"
    sweep.notes.append(
        f"Read from {len(runs)} W&B offline run files (group {groups}); no checkpoint files."
    )
    sweep.notes += skipped
    sweep.warnings += skipped
    return sweep


def sweep_runs(sweep_dir: str | Path) -> tuple[list[OfflineRun], list[str]]:
    """Every W&B run whose transaction log the sweep folder holds (`SWEEP_RUN_FILES`), oldest
    first, and a line for each torn one left out."""
    root = Path(sweep_dir)
    runs, skipped = [], []
    for path in sorted({p for pattern in SWEEP_RUN_FILES for p in root.glob(pattern)}):
        try:
            runs.append(read_offline_run(path))
        except TruncatedRunFile as exc:
            skipped.append(f"{exc}; left out")
    return sorted(runs, key=lambda run: run.created_at), skipped
