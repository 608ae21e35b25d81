"""`ichseg predict --png`: the one-page summary's slices, text and outputs; the slice and instance
numbers the page and the console give."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pydicom
import pytest
import yaml

from ichseg.cli import main
from ichseg.inference.summary_page import DISCLAIMER, MAX_PANELS, _panels, summary_figure
from ichseg.inference.volumes import summarize
from ichseg.visualize import png_bytes
from tests.helpers.dicom_series import ZOOMS, write_series
from tests.helpers.figure_text import text_problems, titles
from tests.helpers.scans import save_scan, with_air

# What a predict summary says of the network behind its mask.
NETWORK = {"threshold": 0.5, "checkpoints": ["a.ckpt"], "networks": ["ichseg.models.unet.UNet"]}


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
    summary = {**summarize(mask, zooms), **NETWORK}
    texts = [t.get_text() for t in summary_figure(hu, mask, zooms, summary, "x", (40, 120)).texts]
    ml = 16 * 0.5 * 0.4 * 5.0 / 1000
    assert any(f"{ml:.2f} mL in 1 bleed(s), on 2 of 4 slices" in t for t in texts), texts
    assert DISCLAIMER in texts
    empty = {**summarize(np.zeros_like(mask), zooms), **NETWORK}
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


def _page_texts(figure) -> list[str]:
    """Every text of a rendered page, its line breaks as spaces."""
    return [" ".join(t.get_text().split()) for t in [*figure.texts, *titles(figure)]]


def test_page_names_network_and_instances_and_shows_every_line_whole(tmp_path):
    mask = np.zeros((16, 16, 5), dtype=bool)
    mask[2:6, 3:5, 1:3] = True  # slices 2-3
    mask[9:12, 9:12, 4] = True  # slice 5
    hu = np.where(mask, 200.0, 30.0)
    zooms = (0.5, 0.4, 5.0)
    job = tmp_path / "dunet-fold0"
    job.mkdir()
    (job / "config.yaml").write_text(yaml.safe_dump({"model": {"display_name": "D-Unet"}}))
    checkpoint = str(job / "checkpoints" / "epoch=0005.ckpt")
    summary = {**summarize(mask, zooms), **NETWORK, "checkpoints": [checkpoint]}
    # A viewer numbers these images 21 and up, the series' first image 20.
    hits = [{"slice": k, "instance_number": 19 + k} for k in summary["slices_with_hemorrhage"]]
    summary["dicom"] = {"instances_with_hemorrhage": hits}
    title = "CT_HEAD_WITHOUT_CONTRAST_0001: " + "Head 5.0 Brain Axial reformatted " * 6
    figure = summary_figure(hu, mask, zooms, summary, title, (40, 120))
    png_bytes(figure)
    assert text_problems(figure) == []
    texts = _page_texts(figure)
    assert " ".join(title.split()) in texts
    detail = next(t for t in texts if t.startswith("Voxel"))
    assert "mL on slices 2-3 (instances 21-22)" in detail
    assert "mL on slice 5 (instance 24)" in detail
    panels = sorted(t.split(":")[0] for t in texts if t.startswith("slice "))
    assert panels == ["slice 2 (instance 21)", "slice 3 (instance 22)", "slice 5 (instance 24)"]
    footer = next(t for t in texts if t.startswith("Mask in red"))
    assert "from D-Unet (1 checkpoint)" in footer and "InstanceNumber a viewer shows" in footer
    # A NIfTI scan, or a series numbered as ichseg counts: slice numbers alone.
    for dicom in (
        {},
        {"instances_with_hemorrhage": [{**h, "instance_number": h["slice"]} for h in hits]},
    ):
        figure = summary_figure(hu, mask, zooms, {**summary, "dicom": dicom}, "x", (40, 120))
        texts = _page_texts(figure)
        assert not any("instance" in t.lower() for t in texts), texts
        assert "slice 2: " in " ".join(texts)


def _numbered(paths, number) -> dict[int, int]:
    """Give each file of a series the InstanceNumber `number(slice)`, its slice counted from 1
    along the positions (independently of ichseg); slice -> instance number."""
    files = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    for k, path in enumerate(files, start=1):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number(k)
        ds.save_as(path, enforce_file_format=True)
    return {k: number(k) for k in range(1, len(files) + 1)}


@pytest.mark.reliability(
    case="instance numbers unlike slice numbers",
    did="a 6-slice DICOM series with a bleed on slices 3-4, its images numbered 21-26, 6-1 and 1-6",
    entry="ichseg predict",
)
@pytest.mark.parametrize(
    "numbering, expected",
    [
        (lambda k: 20 + k, "slices 3-4 (instances 23-24)"),
        (lambda k: 7 - k, "slices 3-4 (instances 4-3)"),
        (lambda k: k, "slices 3-4"),
    ],
    ids=["offset", "reversed", "same"],
)
def test_predict_says_instance_numbers_where_a_viewer_shows_others(
    numbering, expected, ckpts, tmp_path, capsys, record_behaviour
):
    hu = with_air(np.full((64, 64, 6), 30.0))
    hu[10:20, 30:40, 2:4] = 200.0
    numbers = _numbered(write_series(tmp_path / "series", hu), numbering)
    out = tmp_path / "out"
    argv = ["predict", ckpts["pass"], tmp_path / "series", "-o", out, "--precision", "fp32"]
    assert main([str(a) for a in [*argv, "--png"]]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert f", 1 bleed(s) on {expected} -> " in line, line
    # The page the command wrote names the bleeding slices' instance numbers too.
    from PIL import Image

    title = Image.open(out / "series_summary.png").text["Title"]
    shown = {
        k: f"slice {k}" + (f" (instance {numbers[k]})" if numbers[k] != k else "") for k in (3, 4)
    }
    assert title.startswith(f"{shown[3]}: ") and f"| {shown[4]}: " in title, title
    summary = json.loads((out / "series.json").read_text())
    hits = summary["dicom"]["instances_with_hemorrhage"]
    assert {h["slice"]: h["instance_number"] for h in hits} == {3: numbers[3], 4: numbers[4]}
    # The page drawn from what the command recorded says the same.
    figure = summary_figure(hu, hu > 100, ZOOMS, summary, "series", (40, 120))
    detail = next(t for t in _page_texts(figure) if t.startswith("Voxel"))
    assert f"mL on {expected}." in detail
    record_behaviour(f"exit 0: {line.replace(str(tmp_path), '<tmp>')}")
