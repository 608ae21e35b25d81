"""`ichseg bench`: the timing arithmetic, the training paths, and the JSON it writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ichseg.bench import measure, training
from ichseg.bench.compute import training_flops_per_image
from ichseg.bench.experiment import compose_job
from ichseg.bench.run import derived_figures, projection, run_bench
from ichseg.bench.settings import BenchSettings
from ichseg.bench.table import format_bench
from ichseg.cli import main
from ichseg.data.augment import BatchAugment
from ichseg.errors import IchsegError
from ichseg.models.unet import unet_config

CPU = torch.device("cpu")
FAST = {"repeats": 2, "warmup_steps": 2, "warmup_s": 0.0, "window_s": 0.0}


@pytest.fixture
def root(tmp_path, monkeypatch):
    """Data and caches of composed configs go under tmp_path, as ICHSEG_ROOT says."""
    monkeypatch.setenv("ICHSEG_ROOT", str(tmp_path))
    return tmp_path


def test_step_windows_arithmetic(monkeypatch):
    # Clock readings: start, one per warm-up step, then one per window edge. The 2nd warm-up
    # step takes 0.5 s, so a 1.2 s window holds round(1.2 / 0.5) = 2 steps.
    clock = iter([0.0, 1.0, 1.5, 2.5, 4.0])
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    windows = measure.StepWindows(CPU, repeats=2, warmup_steps=2, window_s=1.2)
    windows.start()
    done = [windows.step_done(8) for _ in range(6)]
    assert done == [False, False, False, False, False, True]
    assert windows.steps_per_window == 2
    # Window 1: two steps of 8 images from 1.5 to 2.5 s; window 2: from 2.5 to 4.0 s.
    assert windows.images_per_s == pytest.approx([16 / 1.0, 16 / 1.5])


def test_step_windows_warm_up_lasts_its_seconds(monkeypatch):
    clock = iter([0.0, 0.1, 0.2, 0.3, 5.0, 5.1, 5.2])
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    windows = measure.StepWindows(CPU, repeats=1, warmup_steps=1, warmup_s=4.0, window_s=0.0)
    windows.start()
    results = [windows.step_done(4) for _ in range(5)]
    assert windows.warmup_done == 4, "warm-up must run until 4 s have passed"
    assert results[-1] is True and windows.images_per_s == pytest.approx([4 / 0.1])


def test_summarize_keeps_median_and_spread():
    s = measure.summarize([3.0, 1.0, 2.0, 10.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 10.0, 4)
    with pytest.raises(ValueError):
        measure.summarize([])


def _conv_flops(cin: int, cout: int, k: int, pixels: int) -> int:
    return 2 * cin * cout * k * k * pixels


def test_flop_count_matches_a_hand_count():
    """One image, filters (2, 4), no BN, 8x8: every conv's multiply-adds counted by hand."""
    s = 8
    first = _conv_flops(1, 2, 3, s * s)
    forward = (
        first
        + _conv_flops(2, 2, 3, s * s)
        + _conv_flops(2, 4, 3, (s // 2) ** 2)
        + _conv_flops(4, 4, 3, (s // 2) ** 2)
        + _conv_flops(4, 2, 2, (s // 2) ** 2)  # transposed 2x2 stride 2: per input pixel
        + _conv_flops(4, 2, 3, s * s)
        + _conv_flops(2, 2, 3, s * s)
        + _conv_flops(2, 1, 1, s * s)
    )
    # Backward: a weight gradient for every layer, an input gradient for all but the first
    # (the image needs none); each costs what the forward product did.
    assert training_flops_per_image(unet_config([2, 4]), s) == 3 * forward - first


def test_paper_flops_are_the_design_figures():
    unet = training_flops_per_image(unet_config([64, 128, 256, 512, 1024]), 256)
    dunet = training_flops_per_image(unet_config([32, 64, 128, 256, 512], "both"), 256)
    assert round(unet / 1e9) == 288 and round(dunet / 1e9) == 72


def test_derived_figures_are_ratios_of_medians():
    case = {
        "flops_per_image": 2e11,
        "real": {"images_per_s": measure.summarize([90.0, 100.0, 110.0])},
        "bare": {"images_per_s": measure.summarize([104.0, 105.0, 106.0])},
        "pairs": measure.summarize([104.0 / 90.0, 105.0 / 100.0, 106.0 / 110.0]),
        "monai": {"images_per_s": measure.summarize([40.0, 50.0, 60.0])},
    }
    out = derived_figures(case, {"tflops": {"median": 40.0}})
    # The median of the paired ratios, not the ratio of the medians.
    assert out["overhead_vs_bare"] == pytest.approx(1.05)
    assert out["speedup_vs_monai_loader"] == pytest.approx(2.0)
    assert out["achieved_tflops"] == pytest.approx(20.0)
    assert out["fraction_of_matmul_ceiling"] == pytest.approx(0.5)


def test_epoch_split_and_projection():
    costs = {
        "train_images": 500,
        "validation_s": {"median": 2.0},
        "save_last_s": {"median": 0.5},
        "checkpoint_epoch_writes_s": {"median": 10.5},
    }
    split = training.epoch_shares(costs, 100.0, checkpoint_every=100, last_every_s=0.0)
    # 5 s training + 2 s validation + 0.5 s last.ckpt + (10.5 - 0.5) / 100 s checkpoints.
    assert split["epoch_s"] == pytest.approx(7.6)
    assert split["share"]["validation"] == pytest.approx(2.0 / 7.6)
    assert sum(split["share"].values()) == pytest.approx(1.0)
    # last.ckpt due every 30 s: every ceil(30 / 7) = 5 epochs.
    split = training.epoch_shares(costs, 100.0, checkpoint_every=100, last_every_s=30.0)
    assert split["epochs_per_last_checkpoint"] == 5
    assert split["epoch_s"] == pytest.approx(7.0 + 0.5 / 5 + 0.1)
    # ... but never fewer than once per checkpoint interval.
    split = training.epoch_shares(costs, 100.0, checkpoint_every=2, last_every_s=30.0)
    assert split["seconds"]["save_last"] == pytest.approx(0.5 / 2)
    cases = {
        "unet@256": {"experiment": "paper", "model": "unet", "epoch": {"split": {"epoch_s": 3.6}}},
        "dunet@256": {
            "experiment": "paper",
            "model": "dunet",
            "epoch": {"split": {"epoch_s": 1.8}},
        },
        "dunet@48": {"experiment": "demo", "model": "dunet", "epoch": {"split": {"epoch_s": 9.0}}},
    }
    jobs = {"model": "dunet", "best_gain": 1.5, "best_jobs": 2}
    p = projection(cases, jobs, folds=10, epochs=1000)
    assert p["hours_one_job_at_a_time"] == pytest.approx(10 * 1000 * (3.6 + 1.8) / 3600)
    assert p["hours_with_jobs_per_device"] == pytest.approx(10 * 1000 * (3.6 + 1.8 / 1.5) / 3600)


def test_real_path_runs_the_datamodule_augmentation_and_module(root, monkeypatch):
    cfg = compose_job("tiny", "dunet")
    calls = []
    original = BatchAugment.forward

    def spy(self, image, mask, generator=None):
        calls.append(image.shape[0])
        return original(self, image, mask, generator)

    monkeypatch.setattr(BatchAugment, "forward", spy)
    result = training.real_path(cfg, CPU, FAST)
    steps = result["warmup_steps"] + FAST["repeats"] * result["steps_per_window"]
    assert len(calls) == steps, "every timed training step must pass through the augmentation"
    assert result["images_per_s"]["n"] == FAST["repeats"]
    assert all(v > 0 and math.isfinite(v) for v in result["images_per_s"]["values"])
    assert result["memory"]["peak_rss_mb"] > 0


def test_epoch_batch_sizes_end_with_the_remainder():
    assert training.epoch_batch_sizes(35, 16) == [16, 16, 3]
    assert training.epoch_batch_sizes(32, 16) == [16, 16]
    assert training.epoch_batch_sizes(5, 16) == [5]


def test_bare_loop_trains_the_network_on_the_epochs_batch_sizes(root, monkeypatch):
    cfg = compose_job("tiny", "unet")
    built = []
    original = training._module

    def keep(c):
        module = original(c)
        built.append((module, [p.detach().clone() for p in module.parameters()]))
        return module

    monkeypatch.setattr(training, "_module", keep)
    bare = training.BareLoop(cfg, CPU, FAST, [4, 4, 1])
    assert [bare.step() for _ in range(7)] == [4, 4, 1, 4, 4, 1, 4]
    module, before = built[0]
    moved = [not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True)]
    assert all(moved), "each weight must move after the Adam steps"
    bare.run_window()
    bare.run_window()
    assert bare.windows.images_per_s and len(bare.windows.images_per_s) == 2


def test_real_and_bare_alternate_their_windows(root, monkeypatch):
    cfg = compose_job("tiny", "dunet")
    events = []
    real_step = BatchAugment.forward
    bare_window = training.BareLoop.run_window

    def augment(self, image, mask, generator=None):
        events.append("real")
        return real_step(self, image, mask, generator)

    def window(self):
        events.append("bare")
        bare_window(self)

    monkeypatch.setattr(BatchAugment, "forward", augment)
    monkeypatch.setattr(training.BareLoop, "run_window", window)
    result = training.real_and_bare(cfg, CPU, FAST)
    real, bare, pairs = result["real"], result["bare"], result["pairs"]
    per_window = real["steps_per_window"]
    # Warm-up, then each real window follows one bare window.
    warm = real["warmup_steps"]
    assert events == ["real"] * warm + (["bare"] + ["real"] * per_window) * FAST["repeats"]
    rates = zip(bare["images_per_s"]["values"], real["images_per_s"]["values"], strict=True)
    assert pairs["values"] == pytest.approx([b / r for b, r in rates])
    dm = training._datamodule(cfg)
    dm.setup("fit")
    assert bare["batch_sizes"] == training.epoch_batch_sizes(len(dm.train_rows), dm.batch_size)
    assert real["memory"]["peak_rss_mb"] > 0 and "memory" not in bare


def test_a_precision_the_bare_loop_cannot_time_is_refused_before_training(root, monkeypatch):
    cfg = compose_job("tiny", "dunet", ["precision=16-mixed"])
    monkeypatch.setattr(training, "_module", lambda c: pytest.fail("nothing may be built"))
    with pytest.raises(IchsegError, match="precision=16-mixed: the bare path"):
        training.real_and_bare(cfg, CPU, FAST)


def test_monai_pipeline_flips_like_batch_augment(root):
    cfg = compose_job(
        "tiny",
        "dunet",
        [
            "data.augment.rotation_deg=0",
            "data.augment.shift=0",
            "data.augment.shear_deg=0",
            "data.augment.zoom=0",
            "data.augment.hflip=1.0",
        ],
    )
    dm = training._datamodule(cfg)
    dm.setup("fit")
    loader = training.monai_loader(dm, workers=0, pin_memory=False)
    batch = next(iter(torch.utils.data.DataLoader(loader.dataset, batch_size=len(dm.train_rows))))
    rows = dm.train_rows
    expected_image, expected_mask = BatchAugment.warp(
        dm.images[rows],
        dm.masks[rows],
        angle=torch.zeros(len(rows)),
        shift=torch.zeros(len(rows), 2),
        shear=torch.zeros(len(rows)),
        zoom=torch.ones(len(rows), 2),
        flip=torch.ones(len(rows), dtype=torch.bool),
    )
    assert type(batch["image"]) is torch.Tensor and batch["image"].dtype == torch.float32
    torch.testing.assert_close(batch["image"], expected_image, atol=1e-6, rtol=0)
    assert torch.equal(batch["mask"], expected_mask)


def test_monai_pipeline_augments_with_binary_masks(root):
    dm = training._datamodule(compose_job("tiny", "dunet"))
    dm.setup("fit")
    loader = training.monai_loader(dm, workers=0, pin_memory=False)
    batch = next(iter(loader))
    assert batch["image"].shape == (dm.batch_size, 1, 32, 32)
    assert set(torch.unique(batch["mask"]).tolist()) <= {0.0, 1.0}
    assert not any(torch.equal(batch["image"][0], dm.images[r]) for r in dm.train_rows)


def test_monai_pipeline_without_augmentation_passes_the_slices_as_they_are(root):
    dm = training._datamodule(compose_job("tiny", "dunet", ["data.augment=null"]))
    dm.setup("fit")
    loader = training.monai_loader(dm, workers=0, pin_memory=False)
    batch = next(iter(torch.utils.data.DataLoader(loader.dataset, batch_size=len(dm.train_rows))))
    rows = dm.train_rows
    assert torch.equal(batch["image"], dm.images[rows].float())
    assert torch.equal(batch["mask"], dm.masks[rows].float())


def test_bench_writes_json_and_table(root, capsys):
    settings = BenchSettings(
        experiments=["tiny"],
        models=["dunet"],
        sections=["train", "epoch"],
        repeats=2,
        warmup_steps=1,
        warmup_s=0.0,
        window_s=0.0,
        monai_workers=0,
        out_dir=str(root / "b"),
    )
    result, path = run_bench(settings)
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(result))
    case = saved["training"]["dunet@32"]
    assert case["overhead_vs_bare"] == pytest.approx(case["pairs"]["median"])
    epoch = case["epoch"]
    # 2 * (repeats + 1) epochs alternate plain and checkpoint ones; the first of each is warm-up.
    assert epoch["validation_s"]["n"] == 5 and epoch["save_last_s"]["n"] == 2
    assert epoch["checkpoint_epoch_writes_s"]["n"] == 2
    assert epoch["split"]["epoch_s"] > epoch["validation_s"]["median"]
    assert saved["paper_sweep"] is None, "no paper-size case ran, so nothing is projected"
    table = format_bench(saved)
    assert "dunet@32" in table and f"{case['overhead_vs_bare']:.3f} (" in table


def test_bench_jobs_run_as_separate_processes(root):
    from ichseg.bench.concurrent import run_jobs

    out = run_jobs(2, "tiny", "dunet", "cpu", FAST, [])
    assert out["jobs"] == 2 and out["threads_per_job"] >= 1
    per_job = [j["median"] for j in out["per_job_images_per_s"]]
    assert out["total_images_per_s"] == pytest.approx(sum(per_job))


@pytest.mark.reliability(entry="ichseg bench")
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--sections", "train,warp"], "--sections"),
        (["--experiments", "huge"], "experiment=huge"),
        (["--override", "data.nonsense=1"], "closest: data."),
        (["--override", "data.augment.p=0.5"], "not a key of the config"),
        (["--override", "data.root=/x"], "renamed data.source.root"),
        (["--models", "resnet"], "model=resnet is unknown"),
        (["--device", "tpu"], "--device tpu"),
        (["--window-s", "-1"], "--window-s -1.0"),
        (["--warmup-s", "nan"], "--warmup-s nan"),
        (["--warmup-steps", "-3"], "--warmup-steps -3"),
        (["--monai-workers", "-1"], "--monai-workers -1"),
    ],
)
def test_bench_cli_bad_input_is_one_line(root, capsys, args, named, record_behaviour):
    out = root / "bench-out"
    assert main(["bench", "--sections", "epoch", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and named in err, err
    assert not out.exists(), "a refused bench writes nothing"
    record_behaviour(f"exit 2, nothing written: {err}", case=" ".join(args))


def test_prepare_and_predict_timings(root):
    from ichseg.bench.inference import time_predict, time_prepare

    cfg = compose_job("tiny", "dunet")
    prep = time_prepare(cfg, repeats=1)
    assert prep["release"] == str(root / "data" / "phantom-p16-s64-seed0-physionet")
    assert prep["seconds"]["n"] == 1 and prep["seconds"]["median"] > 0
    # The tiny phantom's balanced set, as the job's DataModule sees it.
    dm = training._datamodule(cfg)
    dm.setup("fit")
    assert (prep["cache_size"], prep["cache_slices"]) == (32, len(dm.data.ids))
    assert not list((root / "data").glob(".bench-prepare-*")), "timed caches must be removed"
    pred = time_predict(cfg.model.module, repeats=1, slices=4, scan_size=64, size=32)
    assert pred["wall_s"]["median"] > pred["in_process_s"]["median"] > 0
    assert pred["memory"]["peak_rss_mb"] > 50
    assert np.isfinite(pred["wall_s"]["values"]).all()


def test_cli_parser_does_not_import_the_benchmark():
    """`ichseg predict` and friends must not pay for torch, Lightning or MONAI at start-up."""
    import subprocess
    import sys

    code = (
        "import sys, ichseg.cli; ichseg.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'pytorch_lightning', 'monai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
