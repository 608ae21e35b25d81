"""The paper's selection criterion: per architecture, the checkpoint epoch with the best mean
validation IoU and Dice over the folds; then the best architecture overall.

The paper asks for "the maximum in both metrics" and does not say what happens when IoU and Dice
disagree or tie, so the rule is made explicit (RULE) and every disagreement is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ichseg.metrics import COLLAPSED
from ichseg.report.render import fmt
from ichseg.report.table import TableRow

# Scores equal to this many decimals count as tied; float sums of the same fold values taken in
# a different order can differ in the last bit.
TIE_DECIMALS = 9
RULE = (
    "For each architecture, among the checkpoint epochs recorded by the largest number of folds, "
    "leaving out those at which a fold's network collapsed (no validation slice with bleeding "
    "gets a predicted pixel on its bleed: lesion Dice 0), "
    "the epoch with the highest mean of (mean validation IoU, mean validation Dice) is selected; "
    f"ties (equal to {TIE_DECIMALS} decimals) go to the lower mean of the two standard "
    "deviations, then to the earlier epoch. The best overall is the selected row with the "
    "highest score, ties broken the same way, then by architecture order in the sweep."
)


@dataclass(frozen=True)
class Choice:
    """The selected checkpoint of one architecture and why."""

    model: str
    row: TableRow
    best_iou_epoch: int  # epoch with the highest mean validation IoU alone
    best_dice_epoch: int  # epoch with the highest mean validation Dice alone
    excluded_epochs: tuple[int, ...]  # recorded by fewer folds than the most-complete epochs
    collapsed_epochs: tuple[int, ...] = ()  # left out: a fold's network had collapsed

    @property
    def epoch(self) -> int:
        """The selected epoch."""
        return self.row.epoch

    @property
    def agreement(self) -> str:
        """One sentence on whether IoU and Dice alone would have picked the same epoch."""
        if self.best_iou_epoch == self.best_dice_epoch == self.epoch:
            return "IoU and Dice alone pick the same epoch."
        return (
            f"IoU alone would pick epoch {self.best_iou_epoch}, Dice alone epoch "
            f"{self.best_dice_epoch}; the combined rule picks {self.epoch}."
        )


@dataclass(frozen=True)
class Selection:
    """Selected checkpoint per architecture and the best overall, under one protocol."""

    protocol: str
    choices: dict[str, Choice]
    best: str | None  # model name of the best overall
    # Architectures without a selectable epoch because a fold collapsed at every one of them.
    all_collapsed: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Model -> how the report names it (the rows' `name`).
    names: dict[str, str] = field(default_factory=dict)

    def epochs(self) -> dict[str, int]:
        """Selected epoch per architecture."""
        return {m: c.epoch for m, c in self.choices.items()}

    def best_key(self) -> tuple[str, int] | None:
        """(model, epoch) of the best overall, or None when nothing was selectable."""
        return None if self.best is None else (self.best, self.choices[self.best].epoch)


def _key(row: TableRow) -> tuple[float, float, int]:
    """Sort key, smaller is better: -score, mean std (undefined std last), epoch."""
    std = (row.val_iou.std + row.val_dice.std) / 2
    return (-round(row.score, TIE_DECIMALS), math.inf if math.isnan(std) else std, row.epoch)


def _defined(row: TableRow) -> bool:
    """A row can be selected only when both its mean IoU and mean Dice are defined."""
    return math.isfinite(row.val_iou.mean) and math.isfinite(row.val_dice.mean)


def select(rows: list[TableRow], protocol: str) -> Selection:
    """Apply RULE to the Table 1 rows of one protocol (rows of other protocols are ignored)."""
    rows = [r for r in rows if r.protocol == protocol and _defined(r)]
    models = list(dict.fromkeys(r.model for r in rows))
    choices: dict[str, Choice] = {}
    all_collapsed: dict[str, tuple[int, ...]] = {}
    for model in models:
        own = [r for r in rows if r.model == model]
        most = max(r.n_folds for r in own)
        complete = [r for r in own if r.n_folds == most]
        candidates = [r for r in complete if not r.collapsed]
        if not candidates:
            all_collapsed[model] = tuple(r.epoch for r in complete)
            continue
        choices[model] = Choice(
            model=model,
            row=min(candidates, key=_key),
            best_iou_epoch=max(candidates, key=lambda r: (r.val_iou.mean, -r.epoch)).epoch,
            best_dice_epoch=max(candidates, key=lambda r: (r.val_dice.mean, -r.epoch)).epoch,
            excluded_epochs=tuple(r.epoch for r in own if r.n_folds < most),
            collapsed_epochs=tuple(r.epoch for r in complete if r.collapsed),
        )
    best = None
    if choices:
        best = min(choices, key=lambda m: (_key(choices[m].row), models.index(m)))
    return Selection(
        protocol=protocol,
        choices=choices,
        best=best,
        all_collapsed=all_collapsed,
        names={r.model: r.name for r in rows},
    )


def _epochs(epochs: tuple[int, ...]) -> str:
    return "epoch" + ("s " if len(epochs) > 1 else " ") + ", ".join(map(str, epochs))


def selection_markdown(selection: Selection) -> str:
    """The selection as Markdown bullet points, with the rule and any disagreement."""
    collapsed = [
        f"- **{selection.names.get(model, model)}**: no epoch selected; at every one "
        f"({_epochs(epochs)}) a fold's network had collapsed ({COLLAPSED})."
        for model, epochs in selection.all_collapsed.items()
    ]
    if not selection.choices:
        none = "No architecture has a checkpoint with defined validation IoU and Dice."
        return "\n".join([none, *collapsed]) + "\n"
    lines = [f"Rule: {RULE}", ""]
    for c in selection.choices.values():
        r = c.row
        line = (
            f"- **{r.name}**: epoch {c.epoch} — val IoU {fmt(r.val_iou.mean)} "
            f"({fmt(r.val_iou.std)}), val Dice {fmt(r.val_dice.mean)} ({fmt(r.val_dice.std)}), "
            f"score {fmt(r.score, 4)}, over {r.n_folds} folds. {c.agreement}"
        )
        if c.excluded_epochs:
            line += (
                " Not considered (recorded by fewer folds): "
                + ", ".join(str(e) for e in c.excluded_epochs)
                + "."
            )
        if c.collapsed_epochs:
            line += (
                f" Not considered (a fold's network had collapsed: {COLLAPSED}): "
                f"{_epochs(c.collapsed_epochs)}."
            )
        lines.append(line)
    lines += collapsed
    best = selection.choices[selection.best] if selection.best else None
    if best is not None:
        lines.append(
            f"- **Best overall**: {best.row.name} at epoch {best.epoch} "
            f"(score {fmt(best.row.score, 4)}). Ranking by mean scores alone is not a "
            "significance test: see the paired comparison."
        )
    return "\n".join(lines) + "\n"
