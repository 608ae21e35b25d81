"""What a report says, computed before anything is written.

`compute` turns a sweep's records into every protocol's Table 1 rows, selection and paired
comparisons; `score_heldout` scores the main protocol's selected checkpoints on the held-out test
split (slices, and whole volumes on a patient split). `ichseg.report.build` only writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ichseg.data.sources import Source
from ichseg.errors import IchsegError
from ichseg.report.compare import PairedComparison, compare_all
from ichseg.report.heldout_slices import SliceResult, evaluate_slices
from ichseg.report.heldout_volumes import (
    ExternalResult,
    VolumeResult,
    evaluate_external,
    score_heldout_volumes,
)
from ichseg.report.selection import Selection, select
from ichseg.report.table import (
    TABLE1_COLUMNS,
    ArchInfo,
    TableRow,
    arch_info,
    table1_columns,
    table_rows,
)
from ichseg.sweeps.model import Sweep


@dataclass(frozen=True)
class SweepResults:
    """Everything the report computes from the records, under every protocol."""

    sweep: Sweep
    protocol: str  # the main protocol: selection and headline comparison
    rows: dict[str, list[TableRow]]
    selections: dict[str, Selection]
    comparisons: dict[str, list[PairedComparison]]
    archs: dict[str, ArchInfo | None]

    @property
    def selection(self) -> Selection:
        """The main protocol's selection, whose checkpoints the held-out split scores."""
        return self.selections[self.protocol]


@dataclass(frozen=True)
class HeldoutResults:
    """The selected checkpoints' scores on the held-out test split."""

    slices: list[SliceResult]
    volumes: list[VolumeResult]  # whole volumes: only on a patient split
    external: list[ExternalResult] = field(default_factory=list)  # one per external source


def compute(sweep: Sweep, protocol_name: str = "paper") -> SweepResults:
    """Table 1 rows, selections and comparisons of `sweep`, with `protocol_name` the main one."""
    main = table1_columns(protocol_name).name
    if not any(j.records for j in sweep.jobs):
        raise IchsegError(
            f"{sweep.root}: no job has written a checkpoint record yet "
            f"({len(sweep.jobs)} job folders found); nothing to report"
        )
    rows = {name: table_rows(sweep, name) for name in TABLE1_COLUMNS}
    selections = {name: select(rows[name], name) for name in TABLE1_COLUMNS}
    return SweepResults(
        sweep=sweep,
        protocol=main,
        rows=rows,
        selections=selections,
        comparisons={name: compare_all(sweep, selections[name]) for name in TABLE1_COLUMNS},
        archs={m: arch_info(sweep, m) for m in sweep.models},
    )


def score_heldout(
    results: SweepResults,
    work_dir: Path,
    external: list[Source] | None = None,
    test: bool = True,
    volume_metrics: str | None = None,
) -> HeldoutResults:
    """Score the selected checkpoints on the test slices and, on a patient split, on whole
    volumes (unless not `test`), and on every volume of each `external` source; their files
    are written under `work_dir` for the report to take in. `volume_metrics` names the volume
    protocol (default: ichseg's, and an external source's own challenge's where it has one)."""
    sweep, selection = results.sweep, results.selection
    return HeldoutResults(
        slices=list(evaluate_slices(sweep, selection)) if test else [],
        volumes=score_heldout_volumes(sweep, selection, work_dir, volume_metrics) if test else [],
        external=evaluate_external(sweep, selection, external or [], work_dir, volume_metrics),
    )
