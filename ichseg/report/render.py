"""Table 1 and the detection table as text: Markdown, LaTeX (booktabs) and CSV.

Numbers come from `ichseg.report.table`; this module only formats them. NA marks an undefined
value; a cell whose folds are not all finite says how many are not.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator

from ichseg.models.network import FLOPS_SIZE
from ichseg.report.table import ArchInfo, DetectionRow, Stat, TableRow

TABLE1_CSV_COLUMNS = (
    "architecture",
    "epoch",
    "protocol",
    "train_iou",
    "train_dice",
    "val_iou_mean",
    "val_iou_std",
    "val_dice_mean",
    "val_dice_std",
    "n_folds",
    "collapsed_folds",
)


def fmt(value: float, digits: int = 3) -> str:
    """A number for tables; NA where undefined."""
    return "NA" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _not_finite(stat: Stat) -> str:
    return f"NA: {stat.missing} of {stat.missing + stat.n} folds not finite"


def fmt_mean(stat: Stat, digits: int = 3) -> str:
    """The mean alone; a cell with non-finite folds says how many."""
    return _not_finite(stat) if stat.missing else fmt(stat.mean, digits)


def fmt_stat(stat: Stat, digits: int = 3) -> str:
    """`mean (std)` as the paper writes it; a cell with non-finite folds says how many."""
    if stat.missing:
        return _not_finite(stat)
    return f"{fmt(stat.mean, digits)} ({fmt(stat.std, digits)})"


def table1_csv(rows: list[TableRow]) -> str:
    """table1.csv: one line per architecture x epoch x protocol; empty cells where undefined."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TABLE1_CSV_COLUMNS)

    def cell(v: float) -> str:
        return repr(v) if math.isfinite(v) else ""

    for r in rows:
        writer.writerow(
            [
                r.model,
                r.epoch,
                r.protocol,
                cell(r.train_iou.mean),
                cell(r.train_dice.mean),
                cell(r.val_iou.mean),
                cell(r.val_iou.std),
                cell(r.val_dice.mean),
                cell(r.val_dice.std),
                r.n_folds,
                " ".join(map(str, r.collapsed)),
            ]
        )
    return buffer.getvalue()


def _marked(
    rows: list[TableRow], chosen: dict[str, int], best: tuple[str, int] | None
) -> Iterator[tuple[TableRow, bool, bool, bool]]:
    """Yield (row, first_of_architecture, is_selected, is_best_overall)."""
    previous = None
    for r in rows:
        yield (
            r,
            r.model != previous,
            chosen.get(r.model) == r.epoch,
            best == (r.model, r.epoch),
        )
        previous = r.model


# Table 1's architecture columns after the name; the paper's, then what ichseg counts.
ARCH_COLUMNS = (
    "Conv. filters per layer",
    "Kernel",
    "Pool",
    "Dropout",
    "Batch",
    "Params",
    f"GFLOPs per {FLOPS_SIZE}² slice",
)


def table1_markdown(
    rows: list[TableRow],
    archs: dict[str, ArchInfo | None],
    chosen: dict[str, int],
    best: tuple[str, int] | None,
) -> str:
    """Table 1 as Markdown; selected rows bold, the best overall marked with a dagger."""
    head = (
        f"| Architecture | {' | '.join(ARCH_COLUMNS)} | Epochs "
        "| Train IoU | Train Dice | Val IoU (std) | Val Dice (std) | n_folds |"
    )
    lines = [head, "|" + "---|" * (len(ARCH_COLUMNS) + 7)]
    for r, first, selected, top in _marked(rows, chosen, best):
        info = archs.get(r.model)
        arch_cells = [r.name, *_arch_cells(info)] if first else [""] * (len(ARCH_COLUMNS) + 1)
        numbers = [str(r.epoch) + (" †" if top else "") + _collapsed_mark(r), *_metric_cells(r)]
        if selected:
            numbers = [f"**{c}**" for c in numbers]
        lines.append("| " + " | ".join([*arch_cells, *numbers, str(r.n_folds)]) + " |")
    return "\n".join(lines) + "\n"


def _collapsed_mark(r: TableRow) -> str:
    """' (collapsed: fold 3)' after the epoch of a row with a collapsed fold, else ''."""
    if not r.collapsed:
        return ""
    return f" (collapsed: fold {', '.join(map(str, r.collapsed))})"


def _metric_cells(r: TableRow) -> list[str]:
    """Train IoU, train Dice (means), val IoU, val Dice (mean and std) of one Table 1 row."""
    return [
        fmt_mean(r.train_iou),
        fmt_mean(r.train_dice),
        fmt_stat(r.val_iou),
        fmt_stat(r.val_dice),
    ]


def _arch_cells(info: ArchInfo | None) -> list[str]:
    """The ARCH_COLUMNS cells of one architecture; '?' when no config was readable."""
    if info is None:
        return ["?"] * len(ARCH_COLUMNS)
    return [
        info.filters,
        info.kernel,
        info.pool,
        info.dropout,
        info.batch_size,
        info.parameters_text,
        info.flops_text,
    ]


def detection_markdown(rows: list[DetectionRow]) -> str:
    """Validation detection sensitivity/specificity per architecture x epoch, as Markdown."""
    lines = [
        "| Architecture | Epochs | Val sensitivity (std) | Val specificity (std) | n_folds |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.name} | {r.epoch} | {fmt_stat(r.sensitivity)} | "
        f"{fmt_stat(r.specificity)} | {r.n_folds} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    """Escape the LaTeX special characters that can appear in names and descriptions."""
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&")):
        text = text.replace(a, b)
    return text.replace("#", r"\#")


def table1_latex(
    rows: list[TableRow],
    archs: dict[str, ArchInfo | None],
    chosen: dict[str, int],
    best: tuple[str, int] | None,
    caption: str,
    label: str,
) -> str:
    """One Table 1 as a LaTeX table (booktabs); selected rows bold, the best overall underlined."""
    lines = [
        r"\begin{table}[ht]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{lllllrrrrrrllr}",
        r"\toprule",
        r"Architecture & Conv.\ filters per layer & Kernel & Pool & Dropout & Batch & Params & "
        rf"GFLOPs per ${FLOPS_SIZE}^2$ slice & Epochs & "
        r"Train IoU & Train Dice & Val IoU (std) & Val Dice (std) & $n$ \\",
        r"\midrule",
    ]
    for r, first, selected, top in _marked(rows, chosen, best):
        if first and lines[-1] != r"\midrule":
            lines.append(r"\midrule")
        info = archs.get(r.model)
        arch_cells = [r.name, *_arch_cells(info)] if first else [""] * (len(ARCH_COLUMNS) + 1)
        numbers = [str(r.epoch) + _tex(_collapsed_mark(r)), *_metric_cells(r)]
        if selected:
            numbers = [rf"\textbf{{{c}}}" for c in numbers]
        if top:
            numbers = [rf"\underline{{{c}}}" for c in numbers]
        cells = [*(_tex(c) for c in arch_cells), *numbers, str(r.n_folds)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        rf"\caption{{{_tex(caption)}}}",
        rf"\label{{{label}}}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"
