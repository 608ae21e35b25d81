"""`ichseg predict --png`: the one-page summary's slices, text and outputs."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np

from ichseg.cli import main
from ichseg.inference.summary_page import DISCLAIMER, MAX_PANELS, _panels, summary_figure
from ichseg.inference.volumes import summarize
from tests.helpers.dicom_series import write_series
from tests.helpers.scans import save_scan, with_air


def test_panels_are_the_largest_bleed_areas_in_slice_order():
    mask = np.zeros((8, 8, 12), dtype=bool)
    areas = [0, 3, 9, 1, 0, 7, 2, 5, 4, 6, 8, 0]
    for k, area in enumerate(areas):
        mask[:, :, k].flat[:area] = True
    # Independently: the MAX_PANELS slices of largest area, sorted.
    expected = sorted(sorted(range(12), key=lambda k: -areas[k])[:MAX_PANELS])
    assert _panels(mask) == expected
    assert _panels(np.zeros((4, 4, 20), dtype=bool)) == [0, 3, 5, 8, 11, 14, 16, 19]
    assert _panels(np.zeros((4, 4, 3), dtype=bool)) == [0, 1, 2]


def test_page_says_the_volume_and_that_it_is_not_a_medical_device():
    mask = np.zeros((16, 16, 4), dtype=bool)
    mask[2:6, 3:5, 1:3] = True  # 16 voxels
    hu = np.where(mask, 200.0, 30.0)
    zooms = (0.5, 0.4, 5.0)
    summary = {**summarize(mask, zooms), "threshold": 0.5}
    texts = [t.get_text() for t in summary_figure(hu, mask, zooms, summary, "x", (40, 120)).texts]
    ml = 16 * 0.5 * 0.4 * 5.0 / 1000
    assert any(f"{ml:.2f} mL in 1 bleed(s), on 2 of 4 slices" in t for t in texts), texts
    assert DISCLAIMER in texts
    empty = {**summarize(np.zeros_like(mask), zooms), "threshold": 0.5}
    texts = [t.get_text() for t in summary_figure(hu, 0 * mask, zooms, empty, "x", (40, 120)).texts]
    assert any("No hemorrhage predicted on any of the 4 slices" in t for t in texts)


def test_png_option_writes_a_page_for_nifti_and_dicom(ckpts, tmp_path, capsys):
    hu = with_air(np.full((64, 64, 3), 30.0))
    hu[10:20, 30:40, 1] = 200.0
    save_scan(tmp_path / "head.nii", hu)
    write_series(tmp_path / "series", hu)
    out = tmp_path / "out"
    argv = ["predict", ckpts["pass"], tmp_path / "head.nii", tmp_path / "series", "-o", out]
    assert main([str(a) for a in [*argv, "--png", "--precision", "fp32"]]) == 0
    for name in ("head", "series"):
        summary = json.loads((out / f"{name}.json").read_text())
        assert summary["png"] == str(out / f"{name}_summary.png")
        page = matplotlib.image.imread(out / f"{name}_summary.png")
        assert page.shape[1] == 1169 and page.shape[0] > 400
        # The mask's red tint is on the page: pixels far redder than any grey.
        red = (page[..., 0] > 0.8) & (page[..., 1] < 0.6) & (page[..., 2] < 0.6)
        assert red.sum() > 100
    # Without --png no page is written, and an earlier page is left alone.
    assert main([str(a) for a in [*argv, "--precision", "fp32"]]) == 0
    assert "png" not in json.loads((out / "head.json").read_text())
    capsys.readouterr()
