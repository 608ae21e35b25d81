"""Pictures for readers: overlay images, and PNG figures whose every text shows whole.

- `overlay_rgb`: CT in grey, ground truth in green, prediction in red (overlap shows yellow);
- `png_bytes` / `save_png`: a matplotlib `Figure` rendered by its own layout engine after its
  titles are wrapped to fit (an axes title within its axes, the figure's title within the
  figure), with every tick label that would overlap its neighbour hidden, and the titles in the
  PNG's `Title` metadata;
- `wrap_to_width`: a text broken at spaces into lines no wider than a width;
- `plain_log_ticks`: a log axis labelled with plain numbers (0.5, 1, 2, 5, 10).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from matplotlib.backend_bases import RendererBase
    from matplotlib.figure import Figure
    from matplotlib.text import Text

# What the figure's title may use of its width; axes titles get their axes' width.
TITLE_WIDTH = 0.96


def overlay_rgb(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, alpha: float = 0.5):
    """An (H, W, 3) uint8 picture of a windowed slice in [0, 1] with truth and prediction tinted."""
    grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    tint = np.zeros_like(rgb)
    tint[..., 1] = np.asarray(truth, dtype=bool)
    tint[..., 0] = np.asarray(pred, dtype=bool)
    painted = tint.any(axis=-1, keepdims=True)
    rgb = np.where(painted, (1.0 - alpha) * rgb + alpha * tint, rgb)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def wrap_to_width(text: Text, width_px: float, renderer: RendererBase) -> None:
    """Break `text` at spaces into lines no wider than `width_px` as drawn by `renderer` (a word
    wider than that keeps a line of its own); its own line breaks stay."""
    lines = []
    for paragraph in text.get_text().split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            text.set_text(candidate)
            if line and text.get_window_extent(renderer).width > width_px:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    text.set_text("\n".join(lines))


def _titles(figure: Figure) -> list[Text]:
    """The figure's title and its axes' titles that have text."""
    suptitle = [figure._suptitle] if figure._suptitle is not None else []
    titles = [*suptitle, *(ax.title for ax in figure.axes)]
    return [t for t in titles if t.get_text()]


def _fit_titles(figure: Figure, renderer: RendererBase) -> None:
    """Wrap every title to the width it may use: the figure's, or its axes'."""
    for ax in figure.axes:
        if ax.title.get_text():
            wrap_to_width(ax.title, ax.get_window_extent(renderer).width, renderer)
    if figure._suptitle is not None:
        wrap_to_width(figure._suptitle, TITLE_WIDTH * figure.bbox.width, renderer)


def _shown_tick_labels(axis: Axis) -> list[Text]:
    """The tick labels of `axis` drawn now: visible, with text, at a tick inside the view."""
    low, high = sorted(axis.get_view_interval())
    ticks = [*axis.get_major_ticks(), *axis.get_minor_ticks()]
    return [
        tick.label1
        for tick in ticks
        if tick.label1.get_visible() and tick.label1.get_text() and low <= tick.get_loc() <= high
    ]


def _hide_overlapping_tick_labels(figure: Figure, renderer: RendererBase) -> None:
    """Along each axis, hide every tick label that would overlap the last one kept."""
    for ax in figure.axes:
        for axis, along in ((ax.xaxis, 0), (ax.yaxis, 1)):
            boxes = [
                (label, label.get_window_extent(renderer)) for label in _shown_tick_labels(axis)
            ]
            boxes.sort(key=lambda pair: pair[1].get_points()[0][along])
            kept = None
            for label, box in boxes:
                if kept is not None and box.overlaps(kept):
                    label.set_visible(False)
                else:
                    kept = box


def png_bytes(figure: Figure) -> bytes:
    """`figure` as PNG bytes: titles wrapped to fit, laid out by its layout engine (if any),
    overlapping tick labels hidden, its titles in the PNG's metadata."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ichseg import __version__

    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else None
    canvas = canvas or FigureCanvasAgg(figure)
    canvas.draw()  # the layout the axes widths come from
    renderer = canvas.get_renderer()
    _fit_titles(figure, renderer)
    canvas.draw()  # the layout with room for the wrapped titles
    _hide_overlapping_tick_labels(figure, renderer)
    title = " | ".join(" ".join(t.get_text().split()) for t in _titles(figure))
    buffer = io.BytesIO()
    metadata = {"Title": title, "Software": f"ichseg {__version__}"}
    figure.savefig(buffer, format="png", metadata=metadata)
    return buffer.getvalue()


def save_png(figure: Figure, path: Path) -> None:
    """Write `png_bytes(figure)` to `path` (under a temporary name, then renamed)."""
    from ichseg.atomic import atomic_path

    data = png_bytes(figure)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def plain_log_ticks(axis: Axis, low: float, high: float) -> None:
    """Put `axis` on a log scale labelled with plain numbers: every 1-9 of each decade when the
    data (`low` to `high`, both > 0) span under one, 1-2-5 under three, decades beyond."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(high / low)
    subs = (1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1 else np.arange(1.0, 10.0)
    getattr(axis.axes, f"set_{axis.axis_name}scale")("log")
    axis.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())
