"""Paired comparison of two architectures over the folds, each at its selected epoch.

Both architectures were validated on the same fold splits, so fold k gives one paired
difference. The test is the two-sided Wilcoxon signed-rank test (scipy); the mean difference
comes with a t-interval and a percentile bootstrap interval (fixed seed). A claim that one
architecture is better is made only when p < ALPHA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ichseg.report.render import fmt
from ichseg.report.selection import Selection, warning_lines
from ichseg.report.table import TABLE1_COLUMNS, fold_values, table1_columns
from ichseg.sweeps.model import Sweep

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
METHOD_TEXT = (
    "Paired over folds: for each fold, each architecture's validation score at its selected "
    "epoch. Test: two-sided Wilcoxon signed-rank (scipy.stats.wilcoxon, zero differences "
    "dropped; exact distribution when there are no ties or zeros, all sign flips enumerated "
    "when there are and n <= 13, normal approximation otherwise). Mean difference with a 95% "
    "t-interval on the paired differences and a 95% percentile bootstrap interval "
    f"({BOOTSTRAP_RESAMPLES} resamples of folds, seed {BOOTSTRAP_SEED}). A difference is called "
    f"significant only when p < {ALPHA}, test by test: IoU and Dice under "
    f"{len(TABLE1_COLUMNS)} protocols make {2 * len(TABLE1_COLUMNS)} tests, with no correction "
    "for multiple comparisons, so the selected protocol's result is the headline and the others "
    "are context."
)


@dataclass(frozen=True)
class PairedComparison:
    """Paired fold-wise comparison of model_b against model_a on one metric (b - a)."""

    protocol: str
    metric: str  # "iou" or "dice"
    model_a: str
    epoch_a: int
    model_b: str
    epoch_b: int
    name_a: str  # how the report names model_a (`Sweep.names`)
    name_b: str
    folds: tuple[int, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]
    unpaired_folds: tuple[int, ...]  # folds where either side has no defined value
    statistic: float
    p_value: float
    method: str
    mean_diff: float
    t_ci: tuple[float, float]
    bootstrap_ci: tuple[float, float]

    @property
    def n(self) -> int:
        """Number of paired folds."""
        return len(self.folds)

    @property
    def significant(self) -> bool:
        """True when the Wilcoxon p-value is below ALPHA."""
        return math.isfinite(self.p_value) and self.p_value < ALPHA

    @property
    def verdict(self) -> str:
        """One sentence a reader can quote; claims a winner only when p < ALPHA."""
        a, b = self.name_a, self.name_b
        what = f"validation {self.metric_label} ({self.protocol} protocol)"
        if self.n < 2:
            return f"Not enough folds to compare {b} with {a} on {what}: {self.n} paired."
        if not any(x != y for x, y in zip(self.a, self.b, strict=True)):
            return f"{b} and {a} score identically on {what} in every paired fold."
        numbers = (
            f"mean difference {b} − {a} = {self.mean_diff:+.3f}, 95% CI "
            f"[{self.t_ci[0]:+.3f}, {self.t_ci[1]:+.3f}], Wilcoxon p = {self.p_value:.4g}, "
            f"n = {self.n} folds"
        )
        if self.significant:
            better, worse = (b, a) if self.mean_diff > 0 else (a, b)
            return f"{better} is better than {worse} on {what}: {numbers}."
        text = f"The difference between {b} and {a} on {what} is not supported ({numbers})."
        if self.n <= 5:
            text += f" With {self.n} folds no two-sided Wilcoxon p-value can fall below {ALPHA}."
        return text

    @property
    def metric_label(self) -> str:
        """IoU or Dice."""
        return "IoU" if self.metric == "iou" else "Dice"


def _method(d: np.ndarray) -> str:
    """Which p-value scipy's method='auto' computes for differences `d` (mirrors scipy 1.13+)."""
    nonzero = np.abs(d[d != 0])
    ties = len(np.unique(nonzero)) < len(nonzero)
    if len(d) > 50:
        return "normal approximation"
    if not ties and len(nonzero) == len(d):
        return "exact"
    if len(d) <= 13:
        return "exact (all sign flips; ties or zeros present)"
    return "normal approximation"


def paired_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
    """Two-sided Wilcoxon signed-rank of b - a: (statistic, p-value, method); NaN when n < 2."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan, "not run"
    if not np.any(d != 0):
        return 0.0, 1.0, "not run (all differences are zero)"
    result = stats.wilcoxon(b, a, alternative="two-sided", method="auto")
    return float(result.statistic), float(result.pvalue), _method(d)


def mean_difference_cis(d: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """95% t-interval and percentile bootstrap interval (fixed seed) of the mean of `d`."""
    n = len(d)
    if n < 2:
        return (math.nan, math.nan), (math.nan, math.nan)
    mean = float(d.mean())
    half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = d[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (mean - half, mean + half), (float(low), float(high))


def compare(
    sweep: Sweep, selection: Selection, model_a: str, model_b: str, metric: str
) -> PairedComparison:
    """Compare model_b with model_a on validation `metric` ("iou"/"dice") at their selections."""
    p = table1_columns(selection.protocol)
    key = p.iou if metric == "iou" else p.dice
    epoch_a = selection.choices[model_a].epoch
    epoch_b = selection.choices[model_b].epoch
    va = fold_values(sweep, model_a, epoch_a, "val", key)
    vb = fold_values(sweep, model_b, epoch_b, "val", key)

    def ok(v: float | None) -> bool:
        return v is not None and math.isfinite(v)

    folds = tuple(sorted(f for f in set(va) & set(vb) if ok(va[f]) and ok(vb[f])))
    unpaired = tuple(sorted((set(va) | set(vb)) - set(folds)))
    a = np.array([va[f] for f in folds], dtype=float)
    b = np.array([vb[f] for f in folds], dtype=float)
    statistic, p_value, method = paired_test(a, b)
    t_ci, boot_ci = mean_difference_cis(b - a)
    return PairedComparison(
        protocol=selection.protocol,
        metric=metric,
        model_a=model_a,
        epoch_a=epoch_a,
        model_b=model_b,
        epoch_b=epoch_b,
        name_a=sweep.names.get(model_a, model_a),
        name_b=sweep.names.get(model_b, model_b),
        folds=folds,
        a=tuple(float(x) for x in a),
        b=tuple(float(x) for x in b),
        unpaired_folds=unpaired,
        statistic=statistic,
        p_value=p_value,
        method=method,
        mean_diff=float((b - a).mean()) if len(folds) else math.nan,
        t_ci=t_ci,
        bootstrap_ci=boot_ci,
    )


def compare_all(sweep: Sweep, selection: Selection) -> list[PairedComparison]:
    """Every pair of selected architectures whose selected epoch is learning (later in sweep
    order minus earlier), IoU and Dice: a run that did not learn says nothing of its
    architecture, and beating it proves nothing."""
    learners = selection.learners()
    models = [m for m in sweep.models if m in learners]
    return [
        compare(sweep, selection, a, b, metric)
        for i, a in enumerate(models)
        for b in models[i + 1 :]
        for metric in ("iou", "dice")
    ]


def comparison_markdown(comparisons: list[PairedComparison], selection: Selection) -> str:
    """Per-fold pairs, statistics and the verdict for each comparison, as Markdown, after one
    warning line per architecture of `selection` left out for want of a usable epoch."""
    warnings = warning_lines(selection)
    if not comparisons:
        none = "Not enough architectures with a usable selected checkpoint to compare."
        return "\n".join([*warnings, none]) + "\n"
    lines = [*warnings, METHOD_TEXT, ""]
    for c in comparisons:
        a, b = c.name_a, c.name_b
        lines += [
            f"**{c.metric_label}**, {b} (epoch {c.epoch_b}) vs {a} (epoch {c.epoch_a}): "
            f"{c.verdict}",
            "",
        ]
        if c.n:
            lines += [
                f"| Fold | {a} | {b} | {b} − {a} |",
                "|---|---|---|---|",
                *(
                    f"| {f} | {fmt(x)} | {fmt(y)} | {y - x:+.3f} |"
                    for f, x, y in zip(c.folds, c.a, c.b, strict=True)
                ),
                "",
            ]
        if c.n >= 2 and c.method.startswith(("exact", "normal")):
            lines.append(
                f"Wilcoxon W = {c.statistic:g} ({c.method}), p = {c.p_value:.4g}; bootstrap 95% "
                f"CI of the mean difference [{c.bootstrap_ci[0]:+.3f}, "
                f"{c.bootstrap_ci[1]:+.3f}]."
            )
        if c.unpaired_folds:
            lines.append(
                "Folds left out (a value missing on either side): "
                + ", ".join(str(f) for f in c.unpaired_folds)
                + "."
            )
        lines.append("")
    return "\n".join(lines)
