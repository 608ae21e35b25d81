"""What a sweep's W&B runs logged, read from the run files in the sweep folder.

Every job writes its run's transaction log into `<job>/wandb/`, offline or online, and each
`ichseg report` its report run's into `<sweep>/wandb/` (`ichseg.sweeps.wandb_offline`). The
dashboard names only keys found here, so these are read without the network.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichseg.errors import IchsegError
from ichseg.sweeps.wandb_api import CHECKPOINT_PREFIX, REPORT_JOB_TYPE
from ichseg.sweeps.wandb_offline import SWEEP_RUN_FILES, OfflineRun, sweep_runs

# The per-job table of checkpoint records; its columns name every metric a job records,
# those undefined at every checkpoint (never logged as a value) included.
RECORDS_TABLE = "checkpoint_records"
RECORD_ID_COLUMNS = ("model", "fold", "epoch")


@dataclass(frozen=True)
class GroupRuns:
    """The runs of one W&B group in a sweep folder and the keys they logged."""

    group: str
    project: str
    entity: str  # "" when the jobs logged without one (W&B's default entity at upload)
    jobs: list[OfflineRun]
    report: OfflineRun | None  # the latest report run of the group
    history: frozenset[str]  # keys of any run's history rows
    summary: frozenset[str]  # history keys and the keys any run set in its summary
    config: frozenset[str]  # dotted config keys of any run (`model.name`, `fold`)
    recorded: frozenset[str]  # `checkpoint/<metric>` of every job's records table's metrics
    skipped: list[str]  # run files left out (torn: a killed job)

    def report_keys(self, type_name: str) -> list[str]:
        """Keys the latest report run logged a value of W&B type `type_name` under
        (`table-file`, `image-file`)."""
        if self.report is None:
            return []
        last: dict[str, Any] = {}
        for row in self.report.rows:
            last.update(row)
        return [k for k, v in last.items() if isinstance(v, dict) and v.get("_type") == type_name]


def _dotted(config: dict, prefix: str = "") -> set[str]:
    """Every key path of a nested config, dotted (`model.name`), the inner nodes included."""
    keys = set()
    for key, value in config.items():
        path = f"{prefix}{key}"
        keys.add(path)
        if isinstance(value, dict):
            keys |= _dotted(value, f"{path}.")
    return keys


def _recorded(run: OfflineRun) -> set[str]:
    """`checkpoint/<metric>` for each metric column of the job's last records table."""
    if not any(RECORDS_TABLE in row for row in run.rows):
        return set()
    columns, _ = run.table(RECORDS_TABLE)
    return {CHECKPOINT_PREFIX + c for c in columns if c not in RECORD_ID_COLUMNS}


def read_group(sweep_dir: str | Path, group: str | None = None) -> GroupRuns:
    """The runs of `group` (default: the group most of the sweep's job runs logged to) among
    the run files of the sweep folder `sweep_dir`."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise IchsegError(f"{root}: sweep folder not found")
    runs, skipped = sweep_runs(root)
    groups = Counter(run.group for run in runs if run.job_type != REPORT_JOB_TYPE)
    if not groups:
        patterns = " or ".join(SWEEP_RUN_FILES)
        raise IchsegError(f"{root}: no W&B run file of a job ({patterns}); was logger=wandb on?")
    if group is None:
        group = groups.most_common(1)[0][0]
    elif group not in groups:
        found = ", ".join(repr(g) for g in sorted(groups))
        raise IchsegError(f"--group {group!r}: no job run of {root} logged to it (found {found})")
    runs = [run for run in runs if run.group == group]
    jobs = [run for run in runs if run.job_type != REPORT_JOB_TYPE]
    reports = [run for run in runs if run.job_type == REPORT_JOB_TYPE]
    history = {key for run in runs for row in run.rows for key in row}
    return GroupRuns(
        group=group,
        project=jobs[0].project,
        entity=jobs[0].entity,
        jobs=jobs,
        report=reports[-1] if reports else None,
        history=frozenset(history),
        summary=frozenset(history | {key for run in runs for key in run.summary}),
        config=frozenset(key for run in runs for key in _dotted(run.config)),
        recorded=frozenset(key for run in jobs for key in _recorded(run)),
        skipped=skipped,
    )
