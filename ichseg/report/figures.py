"""Report figures as PNG files, drawn on matplotlib `Figure` objects (Agg, no global pyplot state).

- loss curves: training and validation Dice loss per epoch, mean +/- std over folds, one panel
  per architecture (the paper's Fig. 3);
- validation Dice per checkpoint epoch, every architecture with std bands, one panel per
  protocol: epochs with a collapsed fold as crosses, the selected epoch ringed;
- test overlays: CT above CT with truth (green), prediction (red) and their overlap (yellow),
  for a few test slices with and without hemorrhage (the paper's Fig. 4).
Each names its networks (and protocol) and is written by `ichseg.visualize.save_png`: titles
wrapped to fit, no tick label over another.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ichseg.report.heldout_slices import SliceResult
from ichseg.report.selection import Selection
from ichseg.report.table import TABLE1_COLUMNS, TableRow
from ichseg.sweeps.model import Sweep
from ichseg.visualize import overlay_rgb, save_png

DPI = 120
# Inches: the overlays' legend (three entries in one row) fits in this width.
MIN_OVERLAY_WIDTH = 4.4


def _mean_std_by_epoch(
    sweep: Sweep, model: str, column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and sample std (0 where one fold) of a history column over folds."""
    by_epoch: dict[int, list[float]] = {}
    for job in sweep.jobs_of(model):
        for row in job.history:
            value = row.get(column, math.nan)
            if math.isfinite(value):
                by_epoch.setdefault(int(row["epoch"]), []).append(value)
    epochs = np.array(sorted(by_epoch), dtype=int)
    values = [np.array(by_epoch[e]) for e in epochs]
    mean = np.array([v.mean() for v in values])
    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    return epochs, mean, std


def loss_curves(sweep: Sweep, path: Path) -> bool:
    """Draw train/val loss mean +/- std per architecture to `path`; False when no history."""
    models = [m for m in sweep.models if any(j.history for j in sweep.jobs_of(m))]
    if not models:
        return False
    fig = Figure(figsize=(5 * len(models), 4), dpi=DPI, layout="tight")
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, model in zip(axes, models, strict=True):
        n = sum(1 for j in sweep.jobs_of(model) if j.history)
        for column, label in (("train/loss", "training"), ("val/loss", "validation")):
            epochs, mean, std = _mean_std_by_epoch(sweep, model, column)
            if len(epochs):
                ax.plot(epochs, mean, label=f"{label} loss")
                ax.fill_between(epochs, mean - std, mean + std, alpha=0.25)
        ax.set_title(f"{sweep.names.get(model, model)} (mean ± std over {n} folds)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("Dice loss")
    save_png(fig, path)
    return True


# How val_dice_by_epoch marks an epoch: an ordinary one, one with a collapsed fold (never
# selected), and the selected one (a ring around its point).
EPOCH_MARKER, COLLAPSED_MARKER, SELECTED_MARKER = "o", "x", "o"
SELECTED_SIZE = 14


def val_dice_by_epoch(
    rows: dict[str, list[TableRow]], selections: dict[str, Selection], path: Path
) -> bool:
    """Draw mean val Dice +/- std per checkpoint epoch, one panel per protocol in `rows`: epochs
    with a collapsed fold as crosses, the selected epoch ringed, an architecture whose selected
    epoch is not learning named so in the legend."""
    protocols = [p for p, r in rows.items() if r]
    if not protocols:
        return False
    fig = Figure(figsize=(5.5 * len(protocols), 4), dpi=DPI, layout="tight")
    axes = fig.subplots(1, len(protocols), squeeze=False)[0]
    for ax, name in zip(axes, protocols, strict=True):
        selection = selections.get(name)
        handles = []
        for model in dict.fromkeys(r.model for r in rows[name]):
            own = [r for r in rows[name] if r.model == model]
            epochs = np.array([r.epoch for r in own])
            mean = np.array([r.val_dice.mean for r in own])
            std = np.nan_to_num(np.array([r.val_dice.std for r in own]))
            choice = selection.choices.get(model) if selection is not None else None
            label = own[0].name + (" (not learning)" if choice and not choice.learning else "")
            (line,) = ax.plot(epochs, mean, label=label)
            colour = line.get_color()
            handles.append(line)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=colour)
            collapsed = np.array([bool(r.collapsed) for r in own])
            for marker, keep in ((EPOCH_MARKER, ~collapsed), (COLLAPSED_MARKER, collapsed)):
                if keep.any():
                    ax.plot(epochs[keep], mean[keep], ls="none", marker=marker, color=colour)
            if choice is not None:
                ax.plot(
                    [choice.epoch],
                    [choice.row.val_dice.mean],
                    ls="none",
                    marker=SELECTED_MARKER,
                    markersize=SELECTED_SIZE,
                    color=colour,
                    markerfacecolor="none",
                    markeredgewidth=2,
                )
        handles.append(
            _key_entry(
                "selected epoch",
                SELECTED_MARKER,
                markersize=SELECTED_SIZE,
                markerfacecolor="none",
                markeredgewidth=2,
            )
        )
        if any(r.collapsed for r in rows[name]):
            handles.append(_key_entry("a fold collapsed (never selected)", COLLAPSED_MARKER))
        ax.set_title(f"validation Dice, {TABLE1_COLUMNS[name].name} protocol")
        ax.set_xlabel("checkpoint epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("Dice (mean ± std over folds)")
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=8)
    save_png(fig, path)
    return True


def _key_entry(label: str, marker: str, **style) -> Line2D:
    """A legend entry for a marker alone, in black: what the marker means on every line."""
    return Line2D([], [], ls="none", marker=marker, color="black", label=label, **style)


def test_overlays(result: SliceResult, path: Path) -> bool:
    """Draw CT above CT + truth (green), prediction (red) and overlap (yellow) per example."""
    if not result.examples:
        return False
    n = len(result.examples)
    # Wide enough for the legend's one row below the panels.
    fig = Figure(figsize=(max(2.2 * n, MIN_OVERLAY_WIDTH), 5.2), dpi=DPI)
    fig.set_layout_engine("tight", rect=(0, 0.05, 1, 1))
    axes = fig.subplots(2, n, squeeze=False)
    for col, ex in enumerate(result.examples):
        image = np.asarray(ex.image, dtype=float)
        image = image / 255.0 if image.max() > 1.0 else image
        axes[0][col].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[1][col].imshow(overlay_rgb(image, ex.mask, ex.prediction))
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][col].set_title(f"{ex.slice_id}\n{ex.caption}", fontsize=8)
    axes[0][0].set_ylabel("CT")
    axes[1][0].set_ylabel("truth / prediction")
    colours = (("ground truth", "#00ff00"), ("prediction", "#ff0000"), ("overlap", "#ffff00"))
    handles = [Patch(color=colour, label=label) for label, colour in colours]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{result.name} epoch {result.epoch}: {result.scoring}", fontsize=9)
    save_png(fig, path)
    return True
