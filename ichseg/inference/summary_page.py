"""`ichseg predict --png`: a one-page picture of a prediction, for a reader who opens no viewer.

The page shows the scan's name, the bleed volume in mL, its bleeds, and up to `MAX_PANELS` axial
slices with the predicted mask tinted red: the slices with the largest bleed area, in slice
order (evenly spaced slices when nothing was predicted). Slices are drawn upright as training
saw them (`to_slices`), in the checkpoints' CT window, with the in-plane voxel aspect, and in the
radiological convention: the patient's right on the left of each panel. Slice numbers count
along the scan's axial axis; for a DICOM series the page gives the instance numbers a viewer
shows beside them where they differ (`ichseg.inference.slice_numbers`). The footer names the
network and says that ichseg is a research tool, not a medical device. Every line is wrapped to
the page's width, and the page grows to hold them.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from ichseg import __version__
from ichseg.data.transforms import to_slices, window
from ichseg.inference.network_name import network_name
from ichseg.inference.slice_numbers import instance_numbers, slices_text
from ichseg.visualize import overlay_rgb, wrap_to_width
from ichseg.visualize import png_bytes as png_bytes

MAX_PANELS = 8
COLUMNS = 4
DISCLAIMER = (
    "ichseg is a research tool, not a medical device: not for diagnosis or treatment decisions."
)
# Inches: the page's width and margin, a row of panels (with its title), the gap between lines.
WIDTH, MARGIN, PANEL, GAP = 11.69, 0.23, 2.95, 0.1
DPI = 100


def _panels(mask: np.ndarray) -> list[int]:
    """The slice indices shown: the largest bleed areas in slice order, else evenly spaced."""
    area = np.count_nonzero(mask, axis=(0, 1))
    bleeding = np.flatnonzero(area)
    if bleeding.size:
        largest = bleeding[np.argsort(-area[bleeding], kind="stable")[:MAX_PANELS]]
        return sorted(int(k) for k in largest)
    count = min(MAX_PANELS, mask.shape[2])
    return sorted({int(k) for k in np.linspace(0, mask.shape[2] - 1, count).round()})


def _header(summary: dict, shown: list[int], instances: dict[int, int | None]) -> list[str]:
    """The lines under the title: the volume, the bleeds and what the panels show."""
    n_bleeds = summary["n_bleeds"]
    volume = (
        f"Predicted intracranial hemorrhage: {summary['bleed_volume_ml']:.2f} mL in "
        f"{n_bleeds} bleed(s), on {summary['n_slices_with_hemorrhage']} of "
        f"{summary['n_slices']} slices"
        if summary["bleed_voxels"]
        else f"No hemorrhage predicted on any of the {summary['n_slices']} slices"
    )
    bleeds = "; ".join(
        f"{b['volume_ml']:.2f} mL on {slices_text(range(first, last + 1), instances)}"
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
    detail = f"Voxel {voxel} mm. " + (f"Bleeds: {bleeds}{more}. " if bleeds else "") + panels
    return [volume, detail]


def _footer(summary: dict, window_hu: tuple[float, float], instances: dict) -> str:
    """The line under the disclaimer: the network, the mask's threshold, the window, numbering."""
    n = len(summary["checkpoints"])
    network = network_name(
        (path, {"_target_": target})
        for path, target in zip(summary["checkpoints"], summary["networks"], strict=True)
    )
    numbering = (
        " Slices count along the scan's axial axis from 1; instances are the DICOM "
        "InstanceNumber a viewer shows."
        if any(number != k for k, number in instances.items())
        else ""
    )
    return (
        f"Mask in red (probability > {summary['threshold']}) from {network} "
        f"({n} checkpoint{'s' * (n != 1)}), CT window {window_hu[0]:g}/{window_hu[1]:g} HU, "
        f"radiological view (patient's right on the left); ichseg {__version__}.{numbering}"
    )


def _stack(figure: Figure, lines: list[tuple[str, dict]], top_in: float) -> tuple[list, float]:
    """Place `lines` (text, style) one under the other from `top_in` inches below the page's
    top, each wrapped to the page's width; the texts and the inches below the top they end at."""
    renderer = figure.canvas.get_renderer()
    placed = []
    for text, style in lines:
        artist = figure.text(MARGIN / WIDTH, 0, text, va="top", **style)
        wrap_to_width(artist, (WIDTH - 2 * MARGIN) * DPI, renderer)
        placed.append((artist, top_in))
        top_in += artist.get_window_extent(renderer).height / DPI + GAP
    return placed, top_in


def _place(placed: list[tuple[Text, float]], height: float) -> None:
    """Set each text's position on a page `height` inches tall from its inches below the top."""
    for artist, top_in in placed:
        artist.set_y(1 - top_in / height)


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
    `ichseg predict` (a DICOM series' `dicom.instances_with_hemorrhage` gives instance numbers),
    `window_hu` the (level, width) to draw the CT in."""
    shown = _panels(mask)
    instances = instance_numbers(summary)
    grey = to_slices(window(hu[:, :, shown], *window_hu))
    tinted = to_slices(mask[:, :, shown].astype(np.float32)) > 0.5
    rows = max(1, -(-len(shown) // COLUMNS))
    figure = Figure(figsize=(WIDTH, 1), dpi=DPI)
    FigureCanvasAgg(figure)
    volume, detail = _header(summary, shown, instances)
    header, header_end = _stack(
        figure,
        [
            (title, {"fontsize": 14, "weight": "bold"}),
            (volume, {"fontsize": 12, "color": "darkred"}),
            (detail, {"fontsize": 9}),
        ],
        0.15,
    )
    panels_end = header_end + rows * PANEL
    footer, height = _stack(
        figure,
        [
            (DISCLAIMER, {"fontsize": 10, "weight": "bold"}),
            (_footer(summary, window_hu, instances), {"fontsize": 8}),
        ],
        panels_end + 0.1,
    )
    figure.set_size_inches(WIDTH, height)
    _place(header + footer, height)
    for index, k in enumerate(shown):
        row, col = divmod(index, COLUMNS)
        bottom = 1 - (header_end + (row + 1) * PANEL - 0.1) / height
        axes = figure.add_axes((0.02 + col * 0.245, bottom, 0.23, (PANEL - 0.45) / height))
        rgb = overlay_rgb(grey[index], np.zeros_like(tinted[index]), tinted[index], alpha=0.55)
        axes.imshow(rgb, aspect=zooms[1] / zooms[0], interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        area_ml = np.count_nonzero(mask[:, :, k]) * float(np.prod(zooms)) / 1000
        axes.set_title(f"{slices_text([k + 1], instances)}: {area_ml:.2f} mL", fontsize=9)
        axes.text(0.01, 0.5, "R", transform=axes.transAxes, color="yellow", va="center")
        axes.text(0.99, 0.5, "L", transform=axes.transAxes, color="yellow", va="center", ha="right")
    return figure
