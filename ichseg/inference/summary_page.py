"""`ichseg predict --png`: a one-page picture of a prediction, for a reader who opens no viewer.

The page shows the scan's name, the bleed volume in mL, its bleeds, and up to `MAX_PANELS` axial
slices with the predicted mask tinted red: the slices with the largest bleed area, in slice
order (evenly spaced slices when nothing was predicted). Slices are drawn upright as training
saw them (`to_slices`), in the checkpoints' CT window, with the in-plane voxel aspect, and in the
radiological convention: the patient's right on the left of each panel. The footer says that
ichseg is a research tool, not a medical device.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ichseg import __version__
from ichseg.data.transforms import to_slices, window
from ichseg.visualize import overlay_rgb

PNG_SUFFIX = "_summary.png"
MAX_PANELS = 8
COLUMNS = 4
DISCLAIMER = (
    "ichseg is a research tool, not a medical device: not for diagnosis or treatment decisions."
)


def _panels(mask: np.ndarray) -> list[int]:
    """The slice indices shown: the largest bleed areas in slice order, else evenly spaced."""
    area = np.count_nonzero(mask, axis=(0, 1))
    bleeding = np.flatnonzero(area)
    if bleeding.size:
        largest = bleeding[np.argsort(-area[bleeding], kind="stable")[:MAX_PANELS]]
        return sorted(int(k) for k in largest)
    count = min(MAX_PANELS, mask.shape[2])
    return sorted({int(k) for k in np.linspace(0, mask.shape[2] - 1, count).round()})


def png_bytes(figure: Figure) -> bytes:
    """A page (`summary_figure`) as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": f"ichseg {__version__}"})
    return buffer.getvalue()


def summary_figure(
    hu: np.ndarray,
    mask: np.ndarray,
    zooms: tuple[float, float, float],
    summary: dict,
    title: str,
    window_hu: tuple[float, float],
) -> Figure:
    """The page. `hu` and `mask` are (X, Y, N) in the training orientation (axis 0 towards the
    patient's left, axis 1 anterior), `zooms` their voxel sizes, `summary` the JSON summary of
    `ichseg predict`, `window_hu` the (level, width) to draw the CT in."""
    shown = _panels(mask)
    grey = to_slices(window(hu[:, :, shown], *window_hu))
    tinted = to_slices(mask[:, :, shown].astype(np.float32)) > 0.5
    rows = max(1, -(-len(shown) // COLUMNS))
    # Inches: a header, `rows` rows of panels, a footer; positions below are fractions of it.
    header, panel, footer = 1.25, 2.95, 0.6
    height = header + rows * panel + footer
    figure = Figure(figsize=(11.69, height), dpi=100)
    FigureCanvasAgg(figure)

    def line(y_in: float, text: str, **style) -> None:
        figure.text(0.02, 1 - y_in / height, text, va="top", **style)

    n_bleeds = summary["n_bleeds"]
    line(0.2, title, fontsize=14, weight="bold")
    line(
        0.55,
        f"Predicted intracranial hemorrhage: {summary['bleed_volume_ml']:.2f} mL in "
        f"{n_bleeds} bleed(s), on {summary['n_slices_with_hemorrhage']} of "
        f"{summary['n_slices']} slices"
        if summary["bleed_voxels"]
        else f"No hemorrhage predicted on any of the {summary['n_slices']} slices",
        fontsize=12,
        color="darkred",
    )
    bleeds = "; ".join(
        f"{b['volume_ml']:.2f} mL on "
        + (f"slice {first}" if first == last else f"slices {first}-{last}")
        for b in summary["bleeds"][:5]
        for first, last in [b["slices"]]
    )
    more = f" (and {n_bleeds - 5} smaller)" if n_bleeds > 5 else ""
    voxel = " × ".join(f"{z:.3g}" for z in summary["voxel_mm"])
    with_bleed = summary["n_slices_with_hemorrhage"]
    panels = (
        f"Shown: the {len(shown)} of {with_bleed} slices with the largest bleed area."
        if with_bleed > len(shown)
        else ""
    )
    line(
        0.9,
        f"Voxel {voxel} mm. " + (f"Bleeds: {bleeds}{more}. " if bleeds else "") + panels,
        fontsize=9,
    )
    for index, k in enumerate(shown):
        row, col = divmod(index, COLUMNS)
        bottom = 1 - (header + (row + 1) * panel - 0.1) / height
        axes = figure.add_axes((0.02 + col * 0.245, bottom, 0.23, (panel - 0.45) / height))
        rgb = overlay_rgb(grey[index], np.zeros_like(tinted[index]), tinted[index], alpha=0.55)
        axes.imshow(rgb, aspect=zooms[1] / zooms[0], interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        area_ml = np.count_nonzero(mask[:, :, k]) * float(np.prod(zooms)) / 1000
        axes.set_title(f"slice {k + 1} ({area_ml:.2f} mL)", fontsize=9)
        axes.text(0.01, 0.5, "R", transform=axes.transAxes, color="yellow", va="center")
        axes.text(0.99, 0.5, "L", transform=axes.transAxes, color="yellow", va="center", ha="right")
    line(height - footer + 0.1, DISCLAIMER, fontsize=10, weight="bold")
    line(
        height - footer + 0.35,
        f"Mask in red (probability > {summary['threshold']}), CT window "
        f"{window_hu[0]:g}/{window_hu[1]:g} HU, radiological view (patient's right on the left); "
        f"ichseg {__version__}.",
        fontsize=8,
    )
    return figure
