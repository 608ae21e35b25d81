"""A `wandb.Table` a run logged, read back from its offline run file, against the CSV file it
was made from."""

from __future__ import annotations

import csv
from pathlib import Path

from ichseg.sweeps.wandb_offline import OfflineRun


def same_cell(logged, text: str) -> bool:
    """A logged table cell against its CSV text: empty is None, a number is the CSV's number
    exactly, text is the text."""
    if text == "":
        return logged is None
    if isinstance(logged, str):
        return logged == text
    return not isinstance(logged, bool) and float(text) == logged


def assert_table_is_csv(run: OfflineRun, key: str, path: Path) -> None:
    """The table `run` logged under `key` has the columns and, row for row, the cells of the
    CSV file at `path`."""
    columns, rows = run.table(key)
    with open(path, newline="") as fh:
        header, *lines = list(csv.reader(fh))
    assert columns == header
    assert len(rows) == len(lines) > 0
    for row, line in zip(rows, lines, strict=True):
        assert all(same_cell(v, t) for v, t in zip(row, line, strict=True)), (row, line)
