"""What a reader of a rendered figure sees of its text: checks on a `Figure` after `png_bytes`."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox


def inside(box: Bbox, outer: Bbox) -> bool:
    """Whether `box` lies wholly within `outer` (window pixels)."""
    return outer.x0 <= box.x0 and box.x1 <= outer.x1 and outer.y0 <= box.y0 and box.y1 <= outer.y1


def titles(figure: Figure) -> list[Text]:
    """The figure's title and its axes' titles that have text."""
    found = [figure._suptitle] if figure._suptitle is not None else []
    return [t for t in [*found, *(ax.title for ax in figure.axes)] if t.get_text()]


def shown_tick_labels(axis) -> list[Text]:
    """The tick labels drawn: visible, with text, at a tick inside the axis' view."""
    low, high = sorted(axis.get_view_interval())
    return [
        t.label1
        for t in [*axis.get_major_ticks(), *axis.get_minor_ticks()]
        if t.label1.get_visible() and t.label1.get_text() and low <= t.get_loc() <= high
    ]


def overlapping(labels: list[Text], renderer) -> list[tuple[str, str]]:
    """Pairs of these texts whose drawn extents intersect."""
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
    return [
        (a, b)
        for i, (a, box_a) in enumerate(boxes)
        for b, box_b in boxes[i + 1 :]
        if box_a.overlaps(box_b)
    ]


def text_problems(figure: Figure) -> list[str]:
    """Everything a reader could not read whole on the rendered `figure`: a title, axis label,
    legend text, figure text or tick label cut by the figure's edge, two titles over each other,
    two tick labels of one axis over each other."""
    renderer = figure.canvas.get_renderer()
    texts = [*titles(figure), *figure.texts]
    for ax in figure.axes:
        texts += [ax.xaxis.label, ax.yaxis.label]
        texts += shown_tick_labels(ax.xaxis) + shown_tick_labels(ax.yaxis)
        legend = ax.get_legend()
        texts += [*legend.get_texts(), legend.get_title()] if legend is not None else []
    for legend in figure.legends:
        texts += legend.get_texts()
    problems = [
        f"cut: {t.get_text()!r}"
        for t in texts
        if t.get_visible()
        and t.get_text()
        and not inside(t.get_window_extent(renderer), figure.bbox)
    ]
    problems += [f"titles overlap: {pair}" for pair in overlapping(titles(figure), renderer)]
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            pairs = overlapping(shown_tick_labels(axis), renderer)
            problems += [f"tick labels overlap: {pair}" for pair in pairs]
    return problems
