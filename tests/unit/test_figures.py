"""Figures: overlays tell truth, prediction and overlap apart and show clean slices too; every
figure of the report and of `ichseg evaluate` names what it shows, no text cut or overlapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.figure import Figure
from matplotlib.image import imread
from PIL import Image

from ichseg.cli import main
from ichseg.data.phantom import write_phantom
from ichseg.inference import evaluate
from ichseg.report import figures
from ichseg.report.figures import test_overlays as draw_overlays
from ichseg.report.heldout_slices import SliceExample, SliceResult, _examples
from ichseg.visualize import png_bytes, save_png
from tests.helpers.checkpoints import PRE, passthrough_module, save_checkpoint
from tests.helpers.figure_text import inside, overlapping, shown_tick_labels, text_problems, titles
from tests.unit.test_report import MODEL_CONFIGS, make_sweep, report, segresnet_case

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


# --- Every figure says what it shows, whole -------------------------------------------------


@pytest.fixture
def drawn(monkeypatch) -> dict[str, Figure]:
    """The figures `save_png` writes (report and evaluate), by file name, as rendered."""
    found: dict[str, Figure] = {}

    def keep(figure: Figure, path: Path) -> None:
        save_png(figure, path)
        found[Path(path).name] = figure

    for module in (figures, evaluate):
        monkeypatch.setattr(module, "save_png", keep)
    return found


@pytest.fixture(scope="module")
def bhsd(tmp_path_factory) -> Path:
    return write_phantom(
        tmp_path_factory.mktemp("bhsd"), patients=6, size=32, seed=2, layout="bhsd"
    )


def _job_checkpoint(root: Path, display_name: str) -> Path:
    """The pass-through checkpoint in a job folder whose config.yaml names its model."""
    job = root / "dunet-fold0"
    (job / "checkpoints").mkdir(parents=True)
    model = {"name": "dunet", "display_name": display_name}
    (job / "config.yaml").write_text(yaml.safe_dump({"model": model}))
    return save_checkpoint(passthrough_module(), job / "checkpoints" / "epoch=0005.ckpt", PRE)


@pytest.mark.reliability(
    case="dice_vs_volume.png of two networks",
    did="ichseg evaluate on a BHSD-layout phantom, once with a checkpoint in a D-Unet job "
    "folder, once with a bare one",
    entry="ichseg evaluate",
)
def test_dice_vs_volume_names_its_network_whole(bhsd, drawn, tmp_path, capsys, record_behaviour):
    named = _job_checkpoint(tmp_path / "sweep", "D-Unet")
    bare = save_checkpoint(passthrough_module(), tmp_path / "bare.ckpt", PRE)
    expected = {
        named: "D-Unet (1 checkpoint) on BHSD (Brain Hemorrhage Segmentation Dataset), synthetic "
        "phantom in its layout (external): ",
        # Outside a job folder: the network's class and what its config says of it.
        bare: "UNet (filters 4-8-16, dropout 0, batch norm none) (1 checkpoint) on BHSD",
    }
    titles_written = []
    for i, (checkpoint, start) in enumerate(expected.items()):
        out = tmp_path / f"eval{i}"
        argv = ["evaluate", checkpoint, "--source", "bhsd", "--root", bhsd, "-o", out]
        assert main([str(a) for a in [*argv, "--precision", "fp32"]]) == 0, capsys.readouterr()
        figure = drawn["dice_vs_volume.png"]
        (title,) = titles(figure)
        assert " ".join(title.get_text().split()).startswith(start)
        assert text_problems(figure) == []
        renderer = figure.canvas.get_renderer()
        assert inside(title.get_window_extent(renderer), figure.bbox)
        # The file says it too: its PNG title, as image viewers show it.
        written = Image.open(out / "dice_vs_volume.png").text["Title"]
        assert written.startswith(start)
        titles_written.append(written)
    assert titles_written[0] != titles_written[1]
    record_behaviour(f"exit 0, the titles: {' / '.join(titles_written)}")


@pytest.mark.parametrize(
    "low, high", [(5, 60), (0.2, 3), (1.5, 40), (2, 9), (0.01, 0.05), (0.3, 5e3)]
)
def test_dice_vs_volume_log_axis_labels_are_plain_and_apart(low, high):
    """Bleed volumes over these ranges put scientific labels over each other on a 5.5-inch
    figure; the axis shows plain numbers, at least two, none over another."""
    volumes = np.geomspace(low, high, 9)
    rows = [{"true_voxels": 1, "true_ml": float(v), "dice_3d": 0.5} for v in volumes]
    summary = {
        "network": "D-Unet",
        "checkpoints": ["a", "b"],
        "mode": "held-out patients",
        "source": {"title": "PhysioNet CT-ICH 1.3.1"},
    }
    figure = evaluate.dice_volume_figure(rows, summary)
    png_bytes(figure)
    (axes,) = figure.axes
    labels = shown_tick_labels(axes.xaxis)
    assert len(labels) >= 2
    assert all(float(t.get_text()) > 0 for t in labels)  # "0.5", "10": no mathtext
    assert overlapping(labels, figure.canvas.get_renderer()) == []
    assert text_problems(figure) == []
    assert titles(figure)[0].get_text().startswith("D-Unet (2 checkpoints) on PhysioNet")


def test_report_figures_show_every_title_whole(tmp_path, drawn, monkeypatch):
    long_name = "Attention U-Net with deep supervision"
    monkeypatch.setitem(MODEL_CONFIGS["segresnet"], "display_name", long_name)
    sweep = make_sweep(tmp_path / "sweep", models=("unet", "dunet", "segresnet"), max_epochs=300)
    report(sweep)
    assert {"loss_curves.png", "val_dice_by_epoch.png"} <= set(drawn)
    subtypes = ("Intraparenchymal", "Intraventricular", "Subarachnoid")
    image, mask = np.zeros((32, 32)), np.zeros((32, 32), bool)
    for n in (1, 6):
        examples = [SliceExample(f"049_{k:02d}", image, mask, mask, subtypes) for k in range(n)]
        result = SliceResult(
            "segresnet", long_name, 300, "ensemble of 10 fold models", 64, {}, {}, {}, examples
        )
        draw_overlays(result, tmp_path / f"overlays_{n}.png")
    for name, figure in drawn.items():
        assert text_problems(figure) == [], name
    names = [t.get_text() for t in titles(drawn["loss_curves.png"])]
    assert any(long_name in " ".join(n.split()) for n in names)
    suptitle = " ".join(titles(drawn["overlays_1.png"])[0].get_text().split())
    assert suptitle == f"{long_name} epoch 300: ensemble of 10 fold models"


def _marked_epochs(ax, colour: str, marker: str, ringed: bool = False) -> list[int]:
    """The epochs drawn as lone `marker`s in `colour` on `ax` (ringed: hollow)."""
    return sorted(
        int(x)
        for line in ax.get_lines()
        if line.get_color() == colour
        and line.get_linestyle() == "None"
        and line.get_marker() == marker
        and (line.get_markerfacecolor() == "none") == ringed
        for x in line.get_xdata()
    )


def test_val_dice_figure_marks_collapsed_and_selected_epochs(tmp_path, drawn, monkeypatch):
    monkeypatch.setitem(MODEL_CONFIGS["segresnet"], "display_name", "SegResNet")
    sweep = make_sweep(
        tmp_path / "sweep",
        metrics=segresnet_case,
        models=("unet", "segresnet"),
        folds=[0, 1],
        fold_override="0,1",
        max_epochs=15,
        every=5,
    )
    report(sweep)
    figure = drawn["val_dice_by_epoch.png"]
    assert text_problems(figure) == []
    for ax in figure.axes:  # the paper protocol's panel, then the lesion protocol's
        colours = {line.get_label(): line.get_color() for line in ax.get_lines()}
        unet, segresnet = colours["U-Net"], colours["SegResNet (not learning)"]
        assert _marked_epochs(ax, unet, "x") == []
        assert _marked_epochs(ax, unet, "o") == [5, 10, 15]
        assert _marked_epochs(ax, segresnet, "x") == [10, 15]
        assert _marked_epochs(ax, segresnet, "o") == [5]
        assert _marked_epochs(ax, unet, "o", ringed=True) == [15]
        assert _marked_epochs(ax, segresnet, "o", ringed=True) == [5]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == [
            "U-Net",
            "SegResNet (not learning)",
            "selected epoch",
            "a fold collapsed (never selected)",
        ]
