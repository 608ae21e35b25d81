"""The paper's selection criterion: per architecture, the checkpoint epoch with the best mean
validation IoU and Dice over the folds; then the best architecture overall.

The paper asks for "the maximum in both metrics" and does not say what happens when IoU and Dice
disagree or tie, so the rule is made explicit (RULE) and every disagreement is reported. The
epoch left after collapsed ones are set aside may still be a network that did not learn: it is
kept and shown, marked by NOT_LEARNING_RULE wherever it appears (`Selection.warnings`), but never
named best overall nor compared.
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
# A selected epoch is not learning when either holds:
# - Its mean validation lesion Dice over the folds is below LESION_DICE_FLOOR. Lesion Dice is the
#   protocol in which empty slices earn nothing: marking every pixel of a slice whose bleed covers
#   a share a of it scores 2a/(1 + a), which is 0.05 at a = 2.6%, while the lowest published
#   learner on this data (the dataset paper's U-Net) scored 0.31.
# - Its selection score is below 1/FAR_BELOW of the highest score of any of the architecture's
#   epochs, collapsed ones and those recorded by fewer folds included: that far below what the
#   same network reached elsewhere, the run failed, which says nothing of the architecture.
# The paper protocol's all-empty-prediction baseline is not used: the records do not hold the
# per-batch truth sums it needs.
LESION_DICE_FLOOR = 0.05
FAR_BELOW = 4
NOT_LEARNING_RULE = (
    "A selected epoch is not learning when its mean validation lesion Dice over the folds is "
    f"below {LESION_DICE_FLOOR} (about what marking every pixel of a slice scores on a bleed "
    "covering 2.6% of it; the lowest published learner on this data scored 0.31), or when its "
    f"score is below 1/{FAR_BELOW} of the highest score of any of the architecture's epochs, "
    "collapsed ones included (the run failed, which says nothing of the architecture). Such an "
    "epoch is shown and marked wherever it appears, but never named best overall nor compared; "
    "when no architecture's selected epoch is learning, the best overall is: no usable epoch."
)
RULE = (
    "For each architecture, among the checkpoint epochs recorded by the largest number of folds, "
    "leaving out those at which a fold's network collapsed (no validation slice with bleeding "
    "gets a predicted pixel on its bleed: lesion Dice 0), "
    "the epoch with the highest mean of (mean validation IoU, mean validation Dice) is selected; "
    f"ties (equal to {TIE_DECIMALS} decimals) go to the lower mean of the two standard "
    "deviations, then to the earlier epoch. The best overall is the selected row with the "
    "highest score among those learning (below), ties broken the same way, then by architecture "
    "order in the sweep."
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
    not_learning: str = ""  # why the selected epoch is not learning (NOT_LEARNING_RULE), or ""

    @property
    def epoch(self) -> int:
        """The selected epoch."""
        return self.row.epoch

    @property
    def learning(self) -> bool:
        """Whether the selected epoch passes NOT_LEARNING_RULE."""
        return not self.not_learning

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
    best: str | None  # model name of the best overall, among the learning choices
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

    def learners(self) -> list[str]:
        """The architectures whose selected epoch is learning, in selection order."""
        return [m for m, c in self.choices.items() if c.learning]

    def warnings(self, models: set[str] | None = None) -> list[str]:
        """One sentence per architecture shown without a usable epoch: its selected epoch is not
        learning (only those in `models`, when given), or a fold collapsed at every epoch."""
        out = []
        for model, c in self.choices.items():
            name = self.names.get(model, model)
            if not c.learning and (models is None or model in models):
                out.append(
                    f"{name} epoch {c.epoch} is not learning ({c.not_learning}): its numbers "
                    f"are shown but say nothing of {name} as an architecture, and it is neither "
                    "named best overall nor compared."
                )
        for model, epochs in self.all_collapsed.items():
            out.append(
                f"{self.names.get(model, model)} has no usable epoch: a fold's network had "
                f"collapsed at every one ({_epochs(epochs)}); nothing of it is selected, compared "
                "or scored."
            )
        return out


def _key(row: TableRow) -> tuple[float, float, int]:
    """Sort key, smaller is better: -score, mean std (undefined std last), epoch."""
    std = (row.val_iou.std + row.val_dice.std) / 2
    return (-round(row.score, TIE_DECIMALS), math.inf if math.isnan(std) else std, row.epoch)


def _defined(row: TableRow) -> bool:
    """A row can be selected only when both its mean IoU and mean Dice are defined."""
    return math.isfinite(row.val_iou.mean) and math.isfinite(row.val_dice.mean)


def not_learning(row: TableRow, own: list[TableRow]) -> str:
    """Why `row`, selected among its architecture's rows `own`, is not learning under
    NOT_LEARNING_RULE; "" when it is learning."""
    reasons = []
    lesion = row.val_lesion_dice
    if math.isfinite(lesion.mean) and lesion.mean < LESION_DICE_FLOOR:
        reasons.append(
            f"mean validation lesion Dice {fmt(lesion.mean)} over {lesion.n} folds, below the "
            f"floor {LESION_DICE_FLOOR}"
        )
    top = max(own, key=lambda r: (r.score, -r.epoch))
    if row.score < top.score / FAR_BELOW:
        where = f"epoch {top.epoch}" + (
            f", where fold {', '.join(map(str, top.collapsed))} collapsed" if top.collapsed else ""
        )
        reasons.append(
            f"score {fmt(row.score, 4)}, below 1/{FAR_BELOW} of the {fmt(top.score, 4)} at {where}"
        )
    return "; ".join(reasons)


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
        chosen = min(candidates, key=_key)
        choices[model] = Choice(
            model=model,
            row=chosen,
            best_iou_epoch=max(candidates, key=lambda r: (r.val_iou.mean, -r.epoch)).epoch,
            best_dice_epoch=max(candidates, key=lambda r: (r.val_dice.mean, -r.epoch)).epoch,
            excluded_epochs=tuple(r.epoch for r in own if r.n_folds < most),
            collapsed_epochs=tuple(r.epoch for r in complete if r.collapsed),
            not_learning=not_learning(chosen, own),
        )
    learners = [m for m, c in choices.items() if c.learning]
    best = None
    if learners:
        best = min(learners, key=lambda m: (_key(choices[m].row), models.index(m)))
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
        none = (
            "No usable epoch: no architecture has an epoch without a collapsed fold whose "
            "validation IoU and Dice are defined."
        )
        return "\n".join([none, *collapsed]) + "\n"
    lines = [f"Rule: {RULE}", "", f"Not learning: {NOT_LEARNING_RULE}", ""]
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
        if not c.learning:
            line += f" **Not learning**: {c.not_learning}."
        lines.append(line)
    lines += collapsed
    best = selection.choices[selection.best] if selection.best else None
    if best is not None:
        lines.append(
            f"- **Best overall**: {best.row.name} at epoch {best.epoch} "
            f"(score {fmt(best.row.score, 4)}). Ranking by mean scores alone is not a "
            "significance test: see the paired comparison."
        )
    else:
        lines.append(
            "- **Best overall**: none, no usable epoch: no architecture's selected epoch is "
            "learning."
        )
    return "\n".join(lines) + "\n"


def warning_lines(selection: Selection, models: set[str] | None = None) -> list[str]:
    """`selection.warnings(models)` as Markdown paragraphs of one line each."""
    return [line for w in selection.warnings(models) for line in (f"**Warning**: {w}", "")]
