"""The report stage on hand-made sweep folders: Table 1, selection, paired test, completeness."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from matplotlib.image import imread
from scipy import stats

from ichseg.errors import IchsegError
from ichseg.jobs.records import read_records, upsert_history, upsert_record, write_job
from ichseg.metrics import METRICS_VERSION, PROTOCOLS
from ichseg.models.unet import unet_config
from ichseg.report import compute as compute_module
from ichseg.report.build import build_report
from ichseg.report.compute import compute, score_heldout
from ichseg.report.heldout_slices import SliceExample, SliceResult
from ichseg.report.render import TABLE1_CSV_COLUMNS
from ichseg.report.selection import select
from ichseg.report.table import TABLE1_COLUMNS, table_rows
from ichseg.sweeps.local import collect_sweep, latest_sweep

# (IoU key, Dice key) of each Table 1 protocol, from the metric registry.
PROTOCOL_KEYS = {name: PROTOCOLS[name].keys[::-1] for name in TABLE1_COLUMNS}
KEYS = tuple(key for keys in PROTOCOL_KEYS.values() for key in keys)
DETECTION = PROTOCOLS["detection"].keys
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def random_metrics(rng: np.random.Generator) -> dict:
    """A record's metric dict with every key random in (0.2, 0.9)."""
    out = {k: float(rng.uniform(0.2, 0.9)) for k in (*KEYS, *DETECTION)}
    out["loss"] = 1 - out["dice_paper"]
    return out


SEGRESNET = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "init_filters": 8}
# What conf/model/{unet,dunet}.yaml compose to, as far as the report reads it.
MODEL_CONFIGS = {
    "unet": {
        "name": "unet",
        "display_name": "U-Net",
        "order": 1,
        "module": {"net": unet_config([64, 128, 256, 512, 1024], "second", 0.0)},
    },
    "dunet": {
        "name": "dunet",
        "display_name": "D-Unet",
        "order": 2,
        "module": {"net": unet_config([32, 64, 128, 256, 512], "both", 0.2)},
    },
    # No display name or order: the report falls back to the name, and the sweep's order.
    "segresnet": {
        "name": "segresnet",
        "module": {"net": {**SEGRESNET, "_target_": "monai.networks.nets.SegResNet"}},
        "architecture": {"kernel": "3x3"},
    },
}


def make_sweep(
    root: Path,
    metrics=None,
    models=("unet", "dunet"),
    folds=range(10),
    max_epochs: int = 300,
    every: int = 100,
    skip_jobs=(),
    skip_records=(),
    status=None,
    fold_override: str | None = "range(0,10)",
    data: dict | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Write a fake sweep: multirun.yaml, and per job config.yaml, job.json, records, history.

    `metrics(model, fold, epoch, split)` returns a metric dict; random by default.
    """
    rng = np.random.default_rng(0)
    metrics = metrics or (lambda m, f, e, s: random_metrics(rng))
    status = status or {}
    root.mkdir(parents=True)
    cache = cache_dir or root.parent / f"{root.name}-cache"
    if cache_dir is None:
        cache.mkdir()
        facts = {
            "name": "phantom",
            "title": "synthetic phantom (not patient data)",
            "citation": "ichseg.data.phantom",
            "licence": "synthetic",
            "synthetic": True,
            "volumes": 75,
            "slices": 2814,
            "spacing_mm_min": [0.31, 0.31, 5.0],
            "spacing_mm_max": [0.48, 0.48, 5.0],
            "label_map": {"1": "hemorrhage"},
            "subtypes_from": "hemorrhage_diagnosis_raw_ct.csv",
        }
        meta = {
            "labels_sha256": "ab" * 32,
            "source": "phantom",
            "source_facts": facts,
            "counts": {"slices": 636},
        }
        (cache / "meta.json").write_text(json.dumps(meta))
    task = [f"model={','.join(models)}"] + ([f"fold={fold_override}"] if fold_override else [])
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    epochs = sorted({*range(every, max_epochs + 1, every), max_epochs})
    for model in models:
        for fold in folds:
            if (model, fold) in skip_jobs:
                continue
            job = root / f"{model}-fold{fold}"
            job.mkdir()
            config = {
                "model": MODEL_CONFIGS[model],
                "data": {
                    "batch_size": 32,
                    "size": 64,
                    "split": "slice",
                    "n_folds": 10,
                    "seed": 0,
                    **(data or {}),
                    "fold": fold,
                },
                "trainer": {"max_epochs": max_epochs},
                "checkpoint_every": every,
                "seed": 0,
                "fold": fold,
                "experiment_name": "test",
            }
            (job / "config.yaml").write_text(yaml.safe_dump(config))
            write_job(
                job,
                {
                    "model": model,
                    "fold": fold,
                    "seed": 0,
                    "status": status.get((model, fold), "done"),
                    "config_hash": "0" * 16,
                    "code_version": "v0-test",
                    "packages": {"torch": "2.13"},
                    "hardware": {"machine": "x86_64"},
                    "started": 1.7e9,
                    "finished": 1.7e9 + 60,
                    "cache_dir": str(cache),
                },
            )
            for epoch in epochs:
                if (model, fold, epoch) in skip_records:
                    continue
                upsert_record(
                    job,
                    {
                        "model": model,
                        "fold": fold,
                        "epoch": epoch,
                        "checkpoint": f"checkpoints/epoch={epoch:04d}.ckpt",
                        "metrics_version": METRICS_VERSION,
                        "train": metrics(model, fold, epoch, "train"),
                        "val": metrics(model, fold, epoch, "val"),
                    },
                )
            for epoch in range(1, max_epochs + 1, max(1, max_epochs // 3)):
                upsert_history(
                    job,
                    {
                        "epoch": epoch,
                        "train/loss": 1 / epoch + 0.01 * fold,
                        "val/loss": 1.1 / epoch + 0.01 * fold,
                    },
                )
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    """table1.csv as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def report(sweep: Path, protocol: str = "paper") -> Path:
    """The report of a sweep folder with the test split unscored, as `--no-test` writes it."""
    return build_report(compute(collect_sweep(sweep), protocol))


def report_section(text: str, title: str) -> str:
    """The text of one `## title` section of report.md."""
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def test_table1_csv_matches_an_independent_computation(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    out = report(sweep)
    with open(out / "table1.csv", newline="") as fh:
        assert tuple(next(csv.reader(fh))) == TABLE1_CSV_COLUMNS
    rows = read_csv(out / "table1.csv")
    assert len(rows) == 2 * 3 * 4  # models x epochs x protocols
    for row in rows:
        iou_key, dice_key = PROTOCOL_KEYS[row["protocol"]]
        # onebatch is a validation protocol: its train columns are the paper protocol's.
        train_keys = PROTOCOL_KEYS["paper" if row["protocol"] == "onebatch" else row["protocol"]]
        records = [
            r
            for f in range(10)
            for r in read_records(sweep / f"{row['architecture']}-fold{f}")
            if r["epoch"] == int(row["epoch"])
        ]
        assert int(row["n_folds"]) == len(records) == 10
        for column, split, key in (
            ("train_iou", "train", train_keys[0]),
            ("train_dice", "train", train_keys[1]),
            ("val_iou_mean", "val", iou_key),
            ("val_dice_mean", "val", dice_key),
        ):
            expected = np.mean([r[split][key] for r in records])
            assert float(row[column]) == pytest.approx(expected, abs=1e-12)
        for column, key in (("val_iou_std", iou_key), ("val_dice_std", dice_key)):
            expected = np.std([r["val"][key] for r in records], ddof=1)
            assert float(row[column]) == pytest.approx(expected, abs=1e-12)


def test_markdown_and_latex_contain_every_row(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    out = report(sweep)
    text = (out / "report.md").read_text()
    tex = (out / "table1.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 4
    assert "(64,128,256,512,1024)" in text and "(32,64,128,256,512)" in tex
    for row in read_csv(out / "table1.csv"):
        cell = f"{float(row['val_dice_mean']):.3f} ({float(row['val_dice_std']):.3f})"
        section = report_section(
            text,
            "Table 1 (paper protocol)"
            if row["protocol"] == "paper"
            else f"Table 1 under the {row['protocol']} protocol",
        )
        lines = [line.replace("*", "") for line in section.splitlines()]
        assert any(cell in line and f"| {row['epoch']} " in line for line in lines)
        assert any(cell in line for line in tex.splitlines() if "&" in line)
    assert "ddof=1" in text and "augmented training batches" in text
    assert "synthetic phantom" in text and "ab" * 32 in text and "v0-test" in text


def test_selection_picks_best_epoch_and_breaks_ties(tmp_path):
    # Per-fold val IoU = Dice values, by (model, epoch): unet peaks at 200; dunet's epochs 100,
    # 200 and 300 tie on the mean, 200 and 300 have the lower (zero) std, 200 comes first.
    values = {
        ("unet", 100): [0.5] * 10,
        ("unet", 200): [0.7] * 10,
        ("unet", 300): [0.6] * 10,
        ("dunet", 100): [0.5, 0.7] * 5,
        ("dunet", 200): [0.6] * 10,
        ("dunet", 300): [0.6] * 10,
    }

    def metrics(model, fold, epoch, split):
        v = values[(model, epoch)][fold]
        return {**{k: v for k in (*KEYS, *DETECTION)}, "loss": 1 - v}

    sweep = make_sweep(tmp_path / "sweep", metrics=metrics)
    selection = select(table_rows(collect_sweep(sweep), "paper"), "paper")
    assert selection.epochs() == {"unet": 200, "dunet": 200}
    assert selection.best == "unet"
    summary = json.loads((report(sweep) / "summary.json").read_text())
    chosen = summary["selection"]["paper"]["models"]["dunet"]
    assert chosen["epoch"] == 200
    assert chosen["checkpoints"]["3"].endswith("dunet-fold3/checkpoints/epoch=0200.ckpt")


def test_selection_uses_the_combined_score_when_iou_and_dice_disagree(tmp_path):
    def metrics(model, fold, epoch, split):
        iou, dice = {100: (0.70, 0.70), 200: (0.60, 0.75), 300: (0.66, 0.76)}[epoch]
        return {**{k: 0.5 for k in (*KEYS, *DETECTION)}, "iou_paper": iou, "dice_paper": dice}

    sweep = make_sweep(tmp_path / "sweep", metrics=metrics, models=("dunet",))
    choice = select(table_rows(collect_sweep(sweep), "paper"), "paper").choices["dunet"]
    assert (choice.epoch, choice.best_iou_epoch, choice.best_dice_epoch) == (300, 100, 300)
    assert "IoU alone would pick epoch 100" in choice.agreement


def test_a_collapsed_fold_is_marked_and_never_selected(tmp_path):
    # unet scores best at 300, where fold 3 collapsed (lesion Dice 0 under a high paper Dice);
    # dunet collapsed in fold 0 at every epoch.
    def metrics(model, fold, epoch, split):
        v = {100: 0.5, 200: 0.6, 300: 0.8}[epoch]
        out = {**{k: v for k in (*KEYS, *DETECTION)}, "loss": 1 - v}
        if split == "val" and (
            (model, fold, epoch) == ("unet", 3, 300) or (model, fold) == ("dunet", 0)
        ):
            out["dice_lesion"] = out["iou_lesion"] = 0.0
        return out

    sweep = make_sweep(tmp_path / "sweep", metrics=metrics)
    selection = select(table_rows(collect_sweep(sweep), "paper"), "paper")
    assert selection.epochs() == {"unet": 200} and selection.best == "unet"
    assert selection.choices["unet"].collapsed_epochs == (300,)
    assert selection.all_collapsed == {"dunet": (100, 200, 300)}
    out = report(sweep)
    rows = {(r["architecture"], r["epoch"], r["protocol"]): r for r in read_csv(out / "table1.csv")}
    assert rows[("unet", "300", "paper")]["collapsed_folds"] == "3"
    assert rows[("unet", "200", "paper")]["collapsed_folds"] == ""
    assert rows[("dunet", "100", "lesion")]["collapsed_folds"] == "0"
    text = (out / "report.md").read_text()
    table = report_section(text, "Table 1 (paper protocol)")
    assert "| 300 (collapsed: fold 3) |" in table and "| **200 †** |" in table
    assert "Not considered (a fold's network had collapsed" in text
    assert "**D-Unet**: no epoch selected; at every one (epochs 100, 200, 300)" in text


def test_missing_job_and_missing_records_are_named(tmp_path):
    sweep = make_sweep(
        tmp_path / "sweep",
        skip_jobs={("dunet", 3)},
        skip_records={("unet", 1, 200), ("unet", 2, 300)},
        status={("unet", 2): "running"},
    )
    out = report(sweep)
    text = report_section((out / "report.md").read_text(), "Completeness")
    assert "folder is gone): dunet-fold3." in text
    assert "unet-fold1: epochs 200" in text
    assert "unet-fold2: epochs 300" in text
    assert "unet-fold2 (running, or interrupted)" in text
    assert "dunet-fold3 (job missing): epochs 100, 200, 300" in text
    n_folds = {(r["architecture"], r["epoch"]): r["n_folds"] for r in read_csv(out / "table1.csv")}
    assert n_folds[("dunet", "100")] == "9"
    assert n_folds[("unet", "200")] == "9"
    assert n_folds[("unet", "300")] == "9"
    assert n_folds[("unet", "100")] == "10"
    summary = json.loads((out / "summary.json").read_text())
    assert {"model": "unet", "fold": 1, "epoch": 200} in summary["completeness"]["missing_records"]
    assert summary["completeness"]["missing_jobs"] == ["dunet-fold3"]


def test_expected_folds_come_from_n_folds_without_a_fold_override(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", folds=range(3), fold_override=None)
    found = collect_sweep(sweep)
    assert found.expected_folds == list(range(10))
    assert ("unet", 9) in found.missing_jobs and ("dunet", 3) in found.missing_jobs


def test_sweep_without_records_or_multirun_is_an_error(tmp_path):
    sweep = make_sweep(
        tmp_path / "empty",
        max_epochs=100,
        skip_records={(m, f, 100) for m in ("unet", "dunet") for f in range(10)},
    )
    with pytest.raises(IchsegError, match=re.escape(str(sweep))):
        report(sweep)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(IchsegError, match=re.escape("multirun.yaml")):
        report(plain)
    with pytest.raises(IchsegError, match="protocol"):
        report(sweep, protocol="nope")


def _pairs(sweep: Path, key: str, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold val values of unet and dunet at `epoch`, read straight from the records."""

    def values(model):
        return np.array(
            [
                r["val"][key]
                for f in range(10)
                for r in read_records(sweep / f"{model}-fold{f}")
                if r["epoch"] == epoch
            ]
        )

    return values("unet"), values("dunet")


def test_clear_difference_is_claimed_with_scipy_p_value(tmp_path):
    def metrics(model, fold, epoch, split):
        # The same fold draws the same U-Net values; D-Unet adds 0.05-0.07 to each.
        base = random_metrics(np.random.default_rng([fold, split == "val"]))
        if model == "dunet":
            lift = np.random.default_rng([fold, 9]).uniform(0.05, 0.07)
            base = {k: v + lift for k, v in base.items()}
        return base

    sweep = make_sweep(tmp_path / "sweep", metrics=metrics, max_epochs=100)
    out = report(sweep)
    summary = json.loads((out / "summary.json").read_text())
    for name, comparisons in summary["comparisons"].items():
        for c in comparisons:
            key = PROTOCOL_KEYS[name][0 if c["metric"] == "iou" else 1]
            unet, dunet = _pairs(sweep, key, 100)
            assert c["p_value"] == pytest.approx(stats.wilcoxon(dunet, unet).pvalue, rel=1e-12)
            assert c["significant"] == (c["p_value"] < 0.05)
    paper = summary["comparisons"]["paper"]
    unet, dunet = _pairs(sweep, "dice_paper", 100)
    assert np.all(dunet > unet)
    dice = next(c for c in paper if c["metric"] == "dice")
    assert dice["p_value"] == pytest.approx(2 / 2**10)  # exact: all 10 signs agree
    assert dice["mean_diff_b_minus_a"] == pytest.approx(np.mean(dunet - unet))
    d = dunet - unet
    half = stats.t.ppf(0.975, 9) * d.std(ddof=1) / np.sqrt(10)
    assert dice["t_ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    text = report_section((out / "report.md").read_text(), "Paired comparison")
    assert "D-Unet is better than U-Net on validation Dice (paper protocol)" in text


def test_noise_difference_is_not_claimed(tmp_path):
    rng = np.random.default_rng(7)
    sweep = make_sweep(tmp_path / "sweep", metrics=lambda *a: random_metrics(rng), max_epochs=100)
    for key in ("iou_paper", "dice_paper"):
        unet, dunet = _pairs(sweep, key, 100)
        assert stats.wilcoxon(dunet, unet).pvalue >= 0.05  # the premise of this test
    out = report(sweep)
    text = report_section((out / "report.md").read_text(), "Paired comparison")
    assert "is better than" not in text
    assert text.count("is not supported") == 2


def test_one_fold_is_not_enough_to_compare(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", folds=[0], fold_override="0", max_epochs=100)
    text = (report(sweep) / "report.md").read_text()
    assert "Not enough folds" in report_section(text, "Paired comparison")
    assert "is better than" not in text


def test_three_networks_give_every_pair_and_their_own_counts(tmp_path):
    from monai.networks.nets import SegResNet
    from torch.utils.flop_counter import FlopCounterMode

    sweep = make_sweep(tmp_path / "sweep", models=("unet", "dunet", "segresnet"), max_epochs=100)
    out = report(sweep)
    summary = json.loads((out / "summary.json").read_text())
    pairs = {(c["a"], c["b"]) for c in summary["comparisons"]["paper"]}
    assert pairs == {("unet", "dunet"), ("unet", "segresnet"), ("dunet", "segresnet")}
    assert len(summary["comparisons"]["paper"]) == 6  # IoU and Dice of each pair
    # Counted here on MONAI's class itself, outside ichseg.
    net = SegResNet(**SEGRESNET).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, 256, 256))
    described = summary["architectures"]["segresnet"]
    assert described["parameters"] == sum(p.numel() for p in net.parameters())
    assert described["flops_per_slice"] == counter.get_total_flops()
    assert (described["name"], described["kernel"], described["filters"]) == (
        "segresnet",
        "3x3",
        "NA",
    )
    table = report_section((out / "report.md").read_text(), "Table 1 (paper protocol)")
    assert (
        f"| segresnet | NA | 3x3 | NA | NA | 32 | {described['parameters'] / 1e6:.2f}M |" in table
    )


def test_table1_prints_what_a_config_says_and_na_only_where_nothing_does(tmp_path, monkeypatch):
    # A network that describes nothing itself, its config saying 0, False and an empty text.
    said = {"dropout": 0, "batch_norm": False, "pool": ""}
    plain = {"name": "plain", "module": MODEL_CONFIGS["segresnet"]["module"], "architecture": said}
    monkeypatch.setitem(MODEL_CONFIGS, "plain", plain)
    sweep = make_sweep(tmp_path / "sweep", models=("unet", "dunet", "plain"), max_epochs=100)
    text = (report(sweep) / "report.md").read_text()
    table = report_section(text, "Table 1 (paper protocol)")
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:6] for line in table.splitlines()[2:]}
    # Filters, kernel, pool, dropout, batch size: the U-Net's config says dropout 0.0.
    assert rows["U-Net"] == ["(64,128,256,512,1024)", "3x3", "2x2 max", "0", "32"]
    assert rows["D-Unet"] == ["(32,64,128,256,512)", "3x3", "2x2 max", "0.2", "32"]
    assert rows["plain"] == ["NA", "NA", '""', "0", "32"]
    assert "batch norm False, dropout 0;" in report_section(text, "Provenance")


def test_figures_are_pngs_and_test_results_are_rendered(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path / "sweep")
    image = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    mask = np.zeros((32, 32), bool)
    mask[10:20, 10:20] = True
    result = SliceResult(
        model="dunet",
        name="D-Unet",
        epoch=200,
        scoring="ensemble of 10 fold models",
        n_slices=64,
        overall={k: 0.5 for k in (*KEYS, *DETECTION)},
        by_subtype={"Epidural": {"dice_lesion": 0.625, "specificity_detection": None}},
        subtype_counts={"Epidural": 12},
        examples=[SliceExample("049_12", image, mask, np.roll(mask, 2, axis=0), ("Epidural",))],
    )
    calls = []

    def evaluate(found, selection):
        calls.append((found.root, selection.protocol))
        return [result]

    monkeypatch.setattr(compute_module, "evaluate_slices", evaluate)
    results = compute(collect_sweep(sweep))
    out = build_report(results, tmp_path / "out", score_heldout(results, tmp_path / "work"))
    assert calls == [(sweep, "paper")]
    names = ["loss_curves.png", "val_dice_by_epoch.png", "test_overlays_dunet_0.png"]
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert imread(out / name).ndim == 3
    text = (out / "report.md").read_text()
    assert all(f"]({name})" in text for name in names)
    test = report_section(text, "Test set")
    assert "| Epidural | 12 |" in test and "0.625" in test and "ensemble of 10 fold models" in test


def test_rebuilding_replaces_the_report(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", max_epochs=100)
    out = report(sweep)
    (out / "stale.txt").write_text("old")
    assert report(sweep) == out
    assert not (out / "stale.txt").exists()
    assert not [p for p in sweep.iterdir() if p.name.startswith(".report")]


def test_latest_sweep_is_the_last_launched(tmp_path):
    with pytest.raises(IchsegError, match="no sweep"):
        latest_sweep(tmp_path)
    older = tmp_path / "demo" / "a"
    newer = tmp_path / "paper" / "b"
    for path, stamp in ((older, 1_000), (newer, 2_000)):
        path.mkdir(parents=True)
        (path / "multirun.yaml").write_text("{}")
        os.utime(path / "multirun.yaml", (stamp, stamp))
    assert latest_sweep(tmp_path) == newer


def test_heldout_slices_score_ensemble_and_best_fold(tmp_path):
    torch = pytest.importorskip("torch")

    from ichseg.checkpoint import write_checkpoint
    from ichseg.data.datamodule import ICHDataModule
    from ichseg.data.sources import Phantom
    from ichseg.metrics import confusion_matrix, lesion_dice
    from ichseg.report.heldout_slices import evaluate_slices
    from ichseg.training.module import SegmentationModule

    data = {
        "_target_": "ichseg.data.datamodule.ICHDataModule",
        "source": {
            "_target_": "ichseg.data.sources.Phantom",
            "root": str(tmp_path / "phantom"),
            "patients": 6,
            "size": 64,
            "seed": 0,
        },
        "cache_root": str(tmp_path / "cache"),
        "size": 32,
        "batch_size": 8,
    }
    source = Phantom(root=str(tmp_path / "phantom"), patients=6, size=64, seed=0)
    dm = ICHDataModule(
        fold=0, source=source, cache_root=str(tmp_path / "cache"), size=32, batch_size=8
    )
    dm.setup("test")
    sweep = make_sweep(
        tmp_path / "sweep",
        models=("dunet",),
        folds=[0, 1],
        fold_override="0,1",
        max_epochs=100,
        data=data,
        cache_dir=dm.cache_dir,
    )
    modules = {}
    for fold in (0, 1):
        torch.manual_seed(fold)
        module = SegmentationModule(net=unet_config((4, 8, 16, 32, 64), True, 0.2))
        path = sweep / f"dunet-fold{fold}" / "checkpoints" / "epoch=0100.ckpt"
        write_checkpoint(path, module.hparams, module.state_dict())
        modules[fold] = module.eval()

    found = collect_sweep(sweep)
    selection = select(table_rows(found, "paper"), "paper")
    ensemble, single = evaluate_slices(found, selection, n_examples=3, device="cpu")

    def val_score(fold):
        val = read_records(sweep / f"dunet-fold{fold}")[0]["val"]
        return (val["iou_paper"] + val["dice_paper"]) / 2

    best = max((0, 1), key=val_score)
    images, target = dm.images[dm.test_rows], dm.masks[dm.test_rows] > 0.5
    with torch.no_grad():
        probs = {f: torch.sigmoid(m(images)) for f, m in modules.items()}

    def keras_dice(p: np.ndarray, t: np.ndarray) -> float:  # the authors' dice_coef, smooth 100
        p, t = p.astype(np.float64).ravel(), t.astype(np.float64).ravel()
        return (2 * np.sum(p * t) + 100) / (np.sum(p) + np.sum(t) + 100)

    for result, prob in ((ensemble, (probs[0] + probs[1]) / 2), (single, probs[best])):
        pred = prob > 0.5
        p_np, t_np = prob.numpy(), target.numpy()
        batches = [slice(i, i + 8) for i in range(0, len(p_np), 8)]
        expected_paper = np.mean([keras_dice(p_np[b], t_np[b]) for b in batches])
        expected_image = np.mean([keras_dice(p, t) for p, t in zip(p_np, t_np, strict=True)])
        expected_lesion = lesion_dice(confusion_matrix(pred, target))
        assert result.overall["dice_paper"] == pytest.approx(expected_paper, rel=1e-5)
        assert result.overall["dice_perimage"] == pytest.approx(expected_image, rel=1e-5)
        assert result.overall["dice_lesion"] == pytest.approx(expected_lesion)
        assert result.n_slices == len(dm.test_rows)
        subtypes = dm.row_subtypes(dm.test_rows)
        assert result.subtype_counts["Epidural"] == int(subtypes[:, 3].sum())
        assert len(result.examples) == min(3, int(subtypes.any(axis=1).sum()))
    assert ensemble.scoring == "ensemble of 2 folds (0, 1)"
    assert single.scoring == f"best fold ({best})"


def test_wandb_source_gives_the_same_table(tmp_path):
    from types import SimpleNamespace

    from ichseg.jobs.records import read_history
    from ichseg.sweeps.wandb_api import collect_wandb

    sweep = make_sweep(tmp_path / "sweep", skip_records={("unet", 1, 200)})
    runs = []
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        rows = [
            {"checkpoint/epoch": r["epoch"], "checkpoint/metrics_version": r["metrics_version"]}
            | {f"checkpoint/{s}_{k}": v for s in ("train", "val") for k, v in r[s].items()}
            for r in read_records(job)
        ]
        rows += [{**h, "epoch": int(h["epoch"]) - 1} for h in read_history(job)]
        config = yaml.safe_load((job / "config.yaml").read_text())
        runs.append(
            SimpleNamespace(
                config=config,
                state="finished",
                path=["me", "ichseg", job.name],
                scan_history=lambda rows=rows: iter(rows),
                group="test/sweep",
            )
        )
    api = SimpleNamespace(
        runs=lambda project, filters: [r for r in runs if r.group == filters["group"]]
    )
    local = report(sweep)
    remote = build_report(compute(collect_wandb("me/ichseg", "test/sweep", api)), tmp_path / "wb")
    assert (remote / "table1.csv").read_text() == (local / "table1.csv").read_text()
    text = (remote / "report.md").read_text()
    assert "unet-fold1: epochs 200" in text and "Read from W&B" in text
    with pytest.raises(IchsegError, match="no run in group"):
        collect_wandb("me/ichseg", "other", api)


def test_records_of_an_older_metric_version_are_refused(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", max_epochs=100)
    job = sweep / "unet-fold3"
    records = read_records(job)
    for r in records:
        r.pop("metrics_version")
    (job / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(IchsegError, match=r"unet-fold3.*epoch 100.*'dice_paper' was a thresh"):
        report(sweep)
    records[0]["metrics_version"] = 7
    (job / "records.jsonl").write_text(json.dumps(records[0]) + "\n")
    with pytest.raises(IchsegError, match="metrics_version 7, this ichseg reads 2"):
        report(sweep)
    assert not (sweep / "report").exists()


# --- A selected epoch that is not learning is never presented silently -----------------------


def segresnet_case(model, fold, epoch, split):
    """Records of a 2-fold U-Net and SegResNet sweep, epochs 5, 10, 15: the U-Net learns; a
    SegResNet fold collapsed at epochs 10 and 15, which leaves its epoch 5, where it marks
    nearly every pixel (paper Dice 0.027, lesion Dice 0.01 and 0.03)."""
    if model == "unet":
        v = {5: 0.55, 10: 0.65, 15: 0.7}[epoch] + 0.02 * fold
        return {**{k: v for k in (*KEYS, *DETECTION)}, "loss": 1 - v}
    v = {5: 0.027, 10: 0.62, 15: 0.66}[epoch] + 0.002 * fold
    out = {**{k: v for k in (*KEYS, *DETECTION)}, "loss": 1 - v}
    out["dice_lesion"] = out["iou_lesion"] = {5: 0.01 + 0.02 * fold, 10: 0.4, 15: 0.45}[epoch]
    if split == "val" and fold == 1 and epoch > 5:
        out["dice_lesion"] = out["iou_lesion"] = 0.0
    return out


def _segresnet_sweep(root: Path, monkeypatch, metrics=segresnet_case, **kwargs) -> Path:
    """A sweep of `metrics` with 2 folds, epochs 5, 10, 15, SegResNet named as MONAI names it."""
    monkeypatch.setitem(MODEL_CONFIGS["segresnet"], "display_name", "SegResNet")
    args = {"models": ("unet", "segresnet"), "folds": [0, 1], "fold_override": "0,1"}
    return make_sweep(root, metrics=metrics, max_epochs=15, every=5, **{**args, **kwargs})


def _warnings(section: str) -> list[str]:
    return [line for line in section.splitlines() if line.startswith("**Warning**: ")]


@pytest.mark.reliability(
    case="selected epoch of a network that did not learn",
    did="2-fold U-Net and SegResNet sweep (hand-made records): a SegResNet fold collapsed at "
    "epochs 10 and 15, its epoch 5 scores paper Dice 0.027; ichseg report with the test split, "
    "held-out patients and an external set scored",
    entry="ichseg report",
)
def test_a_selected_non_learner_is_marked_in_every_section(tmp_path, monkeypatch, record_behaviour):
    from ichseg.data.datamodule import ICHDataModule
    from ichseg.data.phantom import write_phantom
    from ichseg.data.sources import BHSD, Phantom
    from tests.helpers.checkpoints import PRE, passthrough_module, save_checkpoint, split_of

    phantom = {"root": str(tmp_path / "phantom"), "patients": 12, "size": 32, "seed": 0}
    setup = {"size": 32, "batch_size": 8, "split": "patient", "n_folds": 2, "test_fraction": 0.25}
    cache_root = str(tmp_path / "cache")
    dm = ICHDataModule(fold=0, source=Phantom(**phantom), cache_root=cache_root, **setup)
    dm.setup("test")
    source = {"_target_": "ichseg.data.sources.Phantom", **phantom}
    data = {"_target_": "ichseg.data.datamodule.ICHDataModule", "source": source, **setup}
    sweep = _segresnet_sweep(
        tmp_path / "sweep",
        monkeypatch,
        data={**data, "cache_root": cache_root},
        cache_dir=dm.cache_dir,
    )
    for job in sweep.glob("*-fold*"):
        fold = int(job.name[-1])
        for epoch in (5, 10, 15):
            path = job / "checkpoints" / f"epoch={epoch:04d}.ckpt"
            save_checkpoint(passthrough_module(), path, PRE, split=split_of(dm.cache_dir, fold))
    external = write_phantom(tmp_path / "bhsd", patients=4, size=32, seed=2, layout="bhsd")
    results = compute(collect_sweep(sweep))
    heldout = score_heldout(results, tmp_path / "work", [BHSD(str(external))])
    out = build_report(results, tmp_path / "report", heldout)

    lesion = [np.mean([segresnet_case("segresnet", f, 5, "val")["dice_lesion"] for f in (0, 1)])]
    reason = (
        f"mean validation lesion Dice {lesion[0]:.3f} over 2 folds, below the floor 0.05; "
        f"score {0.028:.4f}, below 1/4 of the {0.661:.4f} at epoch 15, where fold 1 collapsed"
    )
    expected = f"**Warning**: SegResNet epoch 5 is not learning ({reason}): its numbers are shown"
    text = (out / "report.md").read_text()
    sections = [
        "Table 1 (paper protocol)",
        "Paired comparison",
        "Test set",
        "Held-out patients, whole volumes",
        "External validation",
    ]
    for title in sections:
        (line,) = _warnings(report_section(text, title))
        assert line.startswith(expected), (title, line)
    # Still shown and scored, under its own name.
    assert "| SegResNet | 5 | ensemble of 2 folds" in report_section(text, "Test set")
    assert (out / "patients_segresnet" / "summary.json").is_file()
    assert (out / "external0_bhsd_segresnet" / "summary.json").is_file()
    selection = report_section(text, "Selection")
    assert f"**Not learning**: {reason}." in selection
    assert "- **Best overall**: U-Net at epoch 15" in selection
    assert "Not enough architectures with a usable selected checkpoint" in text
    summary = json.loads((out / "summary.json").read_text())
    paper = summary["selection"]["paper"]
    assert paper["best"] == "unet"
    assert paper["models"]["segresnet"]["non_learner"] is True
    assert paper["models"]["segresnet"]["non_learner_reason"] == reason
    assert paper["models"]["unet"]["non_learner"] is False
    assert paper["models"]["unet"]["non_learner_reason"] is None
    assert summary["comparisons"]["paper"] == []  # no pair left to compare
    assert "lesion Dice" in summary["non_learner_rule"]
    assert "Warning: SegResNet epoch 5 is not learning" in (out / "table1.tex").read_text()
    record_behaviour(f"exit 0; one line in each of {', '.join(sections)}: {line}")


@pytest.mark.parametrize(
    "paper, lesion, reasons",
    [
        # Lesion Dice below the floor, the score not far below the architecture's best.
        ({5: 0.6, 10: 0.7, 15: 0.7}, 0.04, ["mean validation lesion Dice 0.040 over 2 folds"]),
        # A fair lesion Dice, the score under a quarter of that at a collapsed epoch.
        ({5: 0.1, 10: 0.5, 15: 0.6}, 0.3, ["score 0.1000, below 1/4 of the 0.6000 at epoch 15"]),
        # Neither: at the floor, and just above a quarter.
        ({5: 0.2, 10: 0.6, 15: 0.7}, 0.05, []),
    ],
)
def test_not_learning_rule_on_each_side_of_its_bounds(tmp_path, paper, lesion, reasons):
    def metrics(model, fold, epoch, split):
        out = {**{k: 0.5 for k in (*KEYS, *DETECTION)}, "loss": 0.5}
        out["dice_paper"] = out["iou_paper"] = paper[epoch]
        out["dice_lesion"] = out["iou_lesion"] = lesion if epoch == 5 else 0.3
        if split == "val" and fold == 1 and epoch > 5:
            out["dice_lesion"] = out["iou_lesion"] = 0.0
        return out

    sweep = make_sweep(
        tmp_path / "sweep", metrics, ("dunet",), [0, 1], max_epochs=15, every=5, fold_override="0,1"
    )
    selection = select(table_rows(collect_sweep(sweep), "paper"), "paper")
    choice = selection.choices["dunet"]
    assert choice.epoch == 5
    found = choice.not_learning.split("; ") if choice.not_learning else []
    assert len(found) == len(reasons)
    assert all(f.startswith(r) for f, r in zip(found, reasons, strict=True))
    assert selection.best == (None if reasons else "dunet")
    assert selection.learners() == ([] if reasons else ["dunet"])
    text = (report(sweep) / "report.md").read_text()
    assert ("none, no usable epoch" in text) == bool(reasons)
    assert ("**Warning**" in text) == bool(reasons)


def test_a_learning_selection_gets_no_warning(tmp_path, monkeypatch):
    def metrics(model, fold, epoch, split):
        out = segresnet_case(model, fold, epoch, split)
        if model == "segresnet" and epoch == 5:  # learned: lesion 0.35, score 0.6
            out = {**out, **{k: 0.6 for k in KEYS}, "dice_lesion": 0.35, "iou_lesion": 0.35}
        return out

    sweep = _segresnet_sweep(tmp_path / "sweep", monkeypatch, metrics)
    out = report(sweep)
    text = (out / "report.md").read_text()
    assert "Warning" not in text and "Not learning**" not in text
    summary = json.loads((out / "summary.json").read_text())
    flags = {
        (name, m): entry["non_learner"]
        for name, sel in summary["selection"].items()
        for m, entry in sel["models"].items()
    }
    assert set(flags.values()) == {False} and len(flags) == 2 * len(TABLE1_COLUMNS)
    assert summary["selection"]["paper"]["models"]["segresnet"]["epoch"] == 5
    assert len(summary["comparisons"]["paper"]) == 2  # SegResNet against U-Net, IoU and Dice


def test_an_architecture_collapsed_at_every_epoch_has_no_usable_epoch(tmp_path, monkeypatch):
    def metrics(model, fold, epoch, split):
        out = segresnet_case(model, fold, epoch, split)
        if model == "segresnet" and split == "val" and fold == 1:
            out["dice_lesion"] = out["iou_lesion"] = 0.0
        return out

    sweep = _segresnet_sweep(tmp_path / "sweep", monkeypatch, metrics)
    out = report(sweep)
    text = (out / "report.md").read_text()
    expected = (
        "**Warning**: SegResNet has no usable epoch: a fold's network had collapsed at every "
        "one (epochs 5, 10, 15); nothing of it is selected, compared or scored."
    )
    for title in ("Table 1 (paper protocol)", "Paired comparison"):
        assert _warnings(report_section(text, title)) == [expected]
    summary = json.loads((out / "summary.json").read_text())
    paper = summary["selection"]["paper"]
    assert paper["best"] == "unet" and list(paper["models"]) == ["unet"]
    assert paper["no_usable_epoch"] == {
        "segresnet": "a fold's network had collapsed at every epoch [5, 10, 15]"
    }
    # Alone, the outcome is no usable epoch at all.
    alone = _segresnet_sweep(tmp_path / "alone", monkeypatch, metrics, models=("segresnet",))
    out = report(alone)
    assert "No usable epoch" in report_section((out / "report.md").read_text(), "Selection")
    assert json.loads((out / "summary.json").read_text())["selection"]["paper"]["best"] is None
