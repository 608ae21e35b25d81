"""Report figures: overlays tell truth, prediction and overlap apart and show clean slices too."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from ichseg.report.figures import test_overlays as draw_overlays
from ichseg.report.heldout_slices import SliceExample, SliceResult, _examples

GREEN, RED, YELLOW = (0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0, 0.0)


def _has_tint(picture: np.ndarray, colour: tuple[float, float, float]) -> bool:
    """True when some pixel is the grey CT blended half with `colour` (or the legend's patch)."""
    rgb = picture[..., :3]
    r, g, b = (rgb[..., i] for i in range(3))
    want = np.array(colour) > 0
    lit = [c for c, on in zip((r, g, b), want, strict=True) if on]
    dark = [c for c, on in zip((r, g, b), want, strict=True) if not on]
    mask = np.all([c > 0.45 for c in lit], axis=0) & np.all([c < 0.05 for c in dark], axis=0)
    return bool(mask.sum() > 20)


def test_overlay_paints_truth_green_prediction_red_overlap_yellow(tmp_path):
    mask = np.zeros((32, 32), bool)
    pred = np.zeros((32, 32), bool)
    mask[4:20, 4:20] = True
    pred[12:28, 12:28] = True
    clean_pred = np.zeros((32, 32), bool)
    clean_pred[2:8, 2:8] = True  # a false positive on a clean slice
    examples = [
        SliceExample("001_10", np.zeros((32, 32)), mask, pred, ("Epidural",)),
        SliceExample("001_02", np.zeros((32, 32)), np.zeros((32, 32), bool), clean_pred, ()),
    ]
    result = SliceResult("dunet", "D-Unet", 5, "best fold (0)", 2, {}, {}, {}, examples)
    path = tmp_path / "overlays.png"
    assert draw_overlays(result, path)
    picture = imread(path)
    for colour in (GREEN, RED, YELLOW):
        assert _has_tint(picture, colour), colour


def test_examples_include_clean_slices():
    subtypes = np.zeros((12, 5), bool)
    subtypes[:6, 0] = True
    subtypes[6:8, 3] = True
    picked = _examples(subtypes, 6)
    assert len(picked) == 6
    assert sum(not subtypes[i].any() for i in picked) == 2
    assert {0, 3} <= {int(np.flatnonzero(subtypes[i])[0]) for i in picked if subtypes[i].any()}
