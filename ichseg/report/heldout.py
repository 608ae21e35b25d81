"""Held-out test-set results as the report consumes them, whoever computed them.

`build_report` takes these from a test-evaluation callable (see `ichseg.report.test_eval`), so
the report can be built, and tested, without a trained model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ichseg.metrics import stage_keys
from ichseg.report.table import display_name, fmt

# Every test-stage protocol, the authors' per-image scoring (`perimage`) beside the others.
METRIC_COLUMNS = stage_keys("test")


@dataclass(frozen=True)
class TestExample:
    """One test slice to draw: the CT image, its ground truth and the predicted mask."""

    __test__ = False  # not a pytest test class, despite the name

    slice_id: str
    image: np.ndarray  # (S, S) float in [0, 1] or uint8
    mask: np.ndarray  # (S, S) bool
    prediction: np.ndarray  # (S, S) bool
    subtypes: tuple[str, ...]  # hemorrhage subtypes of the slice; () for no hemorrhage


@dataclass
class TestResult:
    """Scores of one architecture's selected checkpoint(s) on the held-out test split."""

    __test__ = False  # not a pytest test class, despite the name

    model: str
    epoch: int
    scoring: str  # how the prediction was made: "ensemble of 10 folds (0, ..., 9)", "best fold (3)"
    n_slices: int
    overall: dict[str, float | None]  # metric key (METRIC_COLUMNS) -> value
    by_subtype: dict[str, dict[str, float | None]]  # subtype -> metric key -> value
    subtype_counts: dict[str, int]  # subtype -> number of test slices carrying it
    examples: list[TestExample] = field(default_factory=list)


def test_markdown(results: list[TestResult]) -> str:
    """All test results as one Markdown table: overall and per-subtype rows."""
    head = "| Architecture | Epoch | Scoring | Subset | Slices | " + " | ".join(METRIC_COLUMNS)
    lines = [head + " |", "|" + "---|" * (5 + len(METRIC_COLUMNS))]
    for r in results:
        subsets = [("all", r.n_slices, r.overall)]
        subsets += [(s, r.subtype_counts.get(s, 0), m) for s, m in r.by_subtype.items()]
        for name, count, metrics in subsets:
            cells = [display_name(r.model), str(r.epoch), r.scoring, name, str(count)]
            cells += [fmt(_value(metrics.get(k))) for k in METRIC_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _value(v: float | None) -> float:
    """None (undefined metric, e.g. specificity on a subset without negatives) as NaN."""
    return float("nan") if v is None else float(v)
