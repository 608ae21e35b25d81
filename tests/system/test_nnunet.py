"""nnU-Net v2 interop: the export is exactly the sweep's slices and folds, the import scores
nnU-Net's files as an independent numpy computation does, and bad results are refused.

Most tests forge an nnU-Net results folder in the layout that `test_real_nnunet_...` shows real
nnU-Net v2 writes; that one trains nnU-Net itself (one epoch, on CPU) and imports its files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ichseg.cli import main
from ichseg.data.prepare import PrepareConfig, load_prepared, prepare
from ichseg.errors import IchsegError
from ichseg.jobs.records import read_job, read_records
from ichseg.nnunet.export import export_dataset
from ichseg.nnunet.results import import_results
from ichseg.report.build import build_report
from ichseg.report.compute import compute, score_heldout
from ichseg.report.heldout_slices import evaluate_slices
from ichseg.sweeps.local import collect_sweep
from ichseg.sweeps.model import IMPORTED_TEST_FILE
from tests.helpers.runs import ROOT

TRAINER = "nnUNetTrainer__nnUNetPlans__2d"
SCRIPT = ROOT / "tests" / "helpers" / "nnunet_tiny.py"
# nnU-Net v2 runs in an environment of its own (`make nnunet`), as it usually does.
NNUNET_PYTHON = os.environ.get("ICHSEG_NNUNET_PYTHON", str(ROOT / ".venv-nnunet/bin/python"))


@pytest.fixture
def sweep(finished_sweep, tmp_path) -> Path:
    """A private copy of the finished tiny sweep (hard links: nothing in it is edited in place)."""
    dest = tmp_path / "sweep"
    shutil.copytree(finished_sweep, dest, symlinks=True, copy_function=os.link)
    return dest


def _cache(sweep: Path) -> Path:
    return Path(read_job(sweep / "unet-fold0")["cache_dir"])


def _export(sweep: Path, root: Path, dataset_id: int = 7) -> Path:
    return export_dataset(sweep, root / "raw", dataset_id, root / "preprocessed").dataset_dir


def forge_results(
    dataset_dir: Path,
    results: Path,
    folds: list[int],
    epochs: int = 5,
    test: bool = True,
    trainer: str = TRAINER,
) -> Path:
    """An nnU-Net results folder of `dataset_dir`, with random probabilities per case, in the
    trained-model folder `trainer` (whose configuration the plans hold)."""
    folder = results / dataset_dir.name / trainer
    folder.mkdir(parents=True)
    configuration = trainer.split("__")[-1]
    shutil.copy(dataset_dir / "dataset.json", folder / "dataset.json")
    size = Image.open(next((dataset_dir / "imagesTs").iterdir())).size[0]
    plans = {
        "dataset_name": dataset_dir.name,
        "configurations": {
            configuration: {
                "batch_size": 12,
                "patch_size": [size, size],
                "normalization_schemes": ["ZScoreNormalization"],
                "architecture": {
                    "network_class_name": "PlainConvUNet",
                    "arch_kwargs": {
                        "features_per_stage": [32, 64, 128],
                        "kernel_sizes": [[3, 3], [3, 3], [3, 3]],
                    },
                },
            }
        },
    }
    (folder / "plans.json").write_text(json.dumps(plans))
    splits = json.loads((dataset_dir / "splits_final.json").read_text())
    test_ids = sorted(p.name[: -len("_0000.png")] for p in (dataset_dir / "imagesTs").iterdir())
    rng = np.random.default_rng(0)
    for fold in folds:
        fold_dir = folder / f"fold_{fold}"
        fold_dir.mkdir()
        (fold_dir / "checkpoint_final.pth").write_bytes(b"")
        (fold_dir / "debug.json").write_text(json.dumps({"num_epochs": str(epochs)}))
        sets = [("validation", splits[fold]["val"])] + ([("test", test_ids)] if test else [])
        for sub, ids in sets:
            (fold_dir / sub).mkdir()
            for sid in ids:
                fg = rng.random((1, size, size), dtype=np.float32) ** 3
                np.savez_compressed(
                    fold_dir / sub / f"{sid}.npz", probabilities=np.stack([1 - fg, fg])
                )
    return folder


def _foreground(folder: Path, ids: list[str]) -> np.ndarray:
    return np.stack([np.load(folder / f"{sid}.npz")["probabilities"][1, 0] for sid in ids])


def numpy_protocols(prob: np.ndarray, target: np.ndarray, batch: int) -> dict[str, float]:
    """The protocols recomputed from their definitions, in float64 numpy."""
    p, t = prob.reshape(len(prob), -1).astype(np.float64), target.reshape(len(target), -1)
    inter, ps, ts = (p * t).sum(1), p.sum(1), t.sum(1)

    def soft(i: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        return (2 * i + 100) / (a + b + 100), (i + 100) / (a + b - i + 100)

    per_batch = [
        soft(inter[s : s + batch].sum(), ps[s : s + batch].sum(), ts[s : s + batch].sum())
        for s in range(0, len(p), batch)
    ]
    dice_img, iou_img = soft(inter, ps, ts)
    pred = p > 0.5
    tp, fp, fn = (pred & t).sum(1), (pred & ~t).sum(1), (~pred & t).sum(1)
    gt = t.any(1)
    return {
        "dice_paper": float(np.mean([d for d, _ in per_batch])),
        "iou_paper": float(np.mean([i for _, i in per_batch])),
        "dice_perimage": float(dice_img.mean()),
        "iou_perimage": float(iou_img.mean()),
        "dice_lesion": float((2 * tp / (2 * tp + fp + fn))[gt].mean()),
        "iou_lesion": float((tp / (tp + fp + fn))[gt].mean()),
        "dice_pooled": float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())),
        "iou_pooled": float(tp.sum() / (tp.sum() + fp.sum() + fn.sum())),
        "sensitivity_detection": float(pred.any(1)[gt].mean()),
        "specificity_detection": float((~pred.any(1))[~gt].mean()),
    }


def _val_truth(sweep: Path, fold: int) -> tuple[list[str], np.ndarray, int]:
    data = load_prepared(_cache(sweep))
    ids = data.splits["folds"][fold]["val"]
    row = {sid: i for i, sid in enumerate(data.ids)}
    config = yaml.safe_load((sweep / "unet-fold0" / "config.yaml").read_text())
    batch = config["data"].get("eval_batch_size") or config["data"]["batch_size"]
    return ids, data.masks[[row[s] for s in ids]], int(batch)


def test_export_is_the_cache_itself_with_its_folds(sweep, tmp_path):
    dataset = _export(sweep, tmp_path)
    data = load_prepared(_cache(sweep))
    assert dataset.name == "Dataset007_ICH"
    row = {sid: i for i, sid in enumerate(data.ids)}
    test = set(data.splits["test"])
    train = sorted(set(data.ids) - test)
    images = sorted(p.name for p in (dataset / "imagesTr").iterdir())
    assert images == [f"{sid}_0000.png" for sid in train]
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == [f"{s}.png" for s in train]
    assert sorted(p.name for p in (dataset / "imagesTs").iterdir()) == [
        f"{sid}_0000.png" for sid in sorted(test)
    ]
    for sid in train[:5] + sorted(test)[:3]:
        sub = "imagesTs" if sid in test else "imagesTr"
        pixels = np.asarray(Image.open(dataset / sub / f"{sid}_0000.png"))
        assert pixels.dtype == np.uint8 and np.array_equal(pixels, data.images[row[sid]])
    for sid in train[:5]:
        label = np.asarray(Image.open(dataset / "labelsTr" / f"{sid}.png"))
        assert np.array_equal(label, data.masks[row[sid]].astype(np.uint8))
    folds = json.loads((dataset / "splits_final.json").read_text())
    assert folds == [{"train": f["train"], "val": f["val"]} for f in data.splits["folds"]]
    placed = tmp_path / "preprocessed" / dataset.name / "splits_final.json"
    assert json.loads(placed.read_text()) == folds
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["numTraining"] == len(train) and meta["file_ending"] == ".png"
    assert meta["labels"] == {"background": 0, "hemorrhage": 1}
    assert meta["ichseg"]["cache_key"] == _cache(sweep).name


def test_patient_split_exports_patient_grouped_folds(tmp_path, sweep):
    release = Path(load_prepared(_cache(sweep)).meta["release_root"])
    cache = prepare(release, tmp_path / "cache", PrepareConfig(size=32, split="patient", n_folds=3))
    dataset = export_dataset(cache, tmp_path / "raw", 9).dataset_dir
    patient = {sid: sid.split("_")[0] for sid in load_prepared(cache).ids}
    folds = json.loads((dataset / "splits_final.json").read_text())
    test = {p.name[:3] for p in (dataset / "imagesTs").iterdir()}
    assert len(folds) == 3
    for fold in folds:
        train, val = {patient[s] for s in fold["train"]}, {patient[s] for s in fold["val"]}
        assert not train & val and not (train | val) & test


def test_export_again_writes_nothing_and_never_touches_other_folders(sweep, tmp_path, capsys):
    dataset = _export(sweep, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    args = ["nnunet", "export", str(sweep), str(tmp_path / "raw"), "--dataset-id", "7"]
    assert main(args) == 0
    assert "nothing written" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == stamps

    other = tmp_path / "raw" / "Dataset008_Liver"
    other.mkdir()
    (other / "dataset.json").write_text("{}")
    assert main([*args[:-1], "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Dataset008_Liver" in err and "already used" in err

    mine = tmp_path / "raw" / "Dataset009_ICH"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main([*args[:-1], "9"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "mine"

    splits = tmp_path / "preprocessed" / "Dataset010_ICH" / "splits_final.json"
    splits.parent.mkdir(parents=True)
    splits.write_text("[]")
    assert main([*args[:-1], "10", "--preprocessed", str(tmp_path / "preprocessed")]) == 2
    assert "other folds" in capsys.readouterr().err and splits.read_text() == "[]"
    assert not (tmp_path / "raw" / "Dataset010_ICH").exists()


def test_import_scores_match_numpy_and_the_report_has_three_architectures(sweep, tmp_path):
    dataset = _export(sweep, tmp_path)
    folder = forge_results(dataset, tmp_path / "results", list(range(10)), epochs=5)
    written = import_results(folder.parent, sweep)
    assert [p.name for p in written] == [f"nnunet-fold{k}" for k in range(10)]
    for fold in (0, 7):
        ids, target, batch = _val_truth(sweep, fold)
        (record,) = read_records(sweep / f"nnunet-fold{fold}")
        assert record["epoch"] == 5 and record["train"] == {} and record["checkpoint"] is None
        expected = numpy_protocols(
            _foreground(folder / f"fold_{fold}" / "validation", ids), target, batch
        )
        for key, value in expected.items():
            assert record["val"][key] == pytest.approx(value, abs=1e-6), key
        test = np.load(sweep / f"nnunet-fold{fold}" / IMPORTED_TEST_FILE)
        data = load_prepared(_cache(sweep))
        assert np.array_equal(
            test, _foreground(folder / f"fold_{fold}" / "test", data.splits["test"])
        )

    computed = compute(collect_sweep(sweep), "lesion")
    report = build_report(computed, heldout=score_heldout(computed, tmp_path / "heldout"))
    text = (report / "report.md").read_text()
    assert (
        "| nnU-Net (own final checkpoint) | (32,64,128) | 3x3 | stride-2 conv | NA | 12 | NA | NA "
        in text
    )
    summary = json.loads((report / "summary.json").read_text())
    # nnU-Net takes part like any architecture: compared with U-Net when its epoch learns,
    # marked (and left out of the comparison) when it does not, as the tiny runs may not.
    models = summary["selection"]["lesion"]["models"]
    names = {"dunet": "D-Unet", "nnunet": "nnU-Net (own final checkpoint)"}
    for model, name in names.items():
        epoch = models[model]["epoch"]
        compared = (
            f"{name} (epoch {epoch}) vs U-Net" in text or f"vs {name} (epoch {epoch})" in text
        )
        warned = f"**Warning**: {name} epoch {epoch} is not learning" in text
        if models[model]["non_learner"] or models["unet"]["non_learner"]:
            assert not compared and (warned or models["unet"]["non_learner"]), model
        else:
            assert compared and not warned, model
    assert summary["selection"]["lesion"]["models"]["nnunet"]["epoch"] == 5
    assert summary["selection"]["lesion"]["models"]["nnunet"]["checkpoints"] == {}

    # The test table's ensemble is the fold probabilities' mean, scored as numpy scores it.
    sweep_obj = collect_sweep(sweep)
    from ichseg.report.selection import select
    from ichseg.report.table import table_rows

    results = evaluate_slices(sweep_obj, select(table_rows(sweep_obj, "lesion"), "lesion"), 0)
    ensemble = next(r for r in results if r.model == "nnunet" and r.scoring.startswith("ensemble"))
    data = load_prepared(_cache(sweep))
    row = {sid: i for i, sid in enumerate(data.ids)}
    mean = np.mean(
        [_foreground(folder / f"fold_{k}" / "test", data.splits["test"]) for k in range(10)],
        axis=0,
        dtype=np.float32,
    )
    target = data.masks[[row[s] for s in data.splits["test"]]]
    _, _, batch = _val_truth(sweep, 0)
    expected = numpy_protocols(mean, target, batch)
    for key in ("dice_paper", "dice_lesion", "iou_pooled", "dice_perimage"):
        assert ensemble.overall[key] == pytest.approx(expected[key], abs=1e-5), key


def _break(folder: Path, case: str, dataset: Path) -> str:
    """Damage a forged results folder as one bad-input case; return the expected message part."""
    if case == "another dataset":
        meta = json.loads((folder / "dataset.json").read_text())
        meta["ichseg"]["cache_key"] = "0123456789abcdef"
        (folder / "dataset.json").write_text(json.dumps(meta))
        return "results of prepared cache 0123456789abcdef"
    if case == "not an ichseg export":
        meta = json.loads((folder / "dataset.json").read_text())
        del meta["ichseg"]
        (folder / "dataset.json").write_text(json.dumps(meta))
        return "did not write"
    if case == "another split":
        meta = json.loads((folder / "dataset.json").read_text())
        meta["ichseg"]["splits_sha256"] = "0" * 64
        (folder / "dataset.json").write_text(json.dumps(meta))
        return "other folds"
    if case == "missing fold":
        shutil.rmtree(folder / "fold_3")
        return "folds 3 have no finished nnU-Net training"
    if case == "unfinished fold":
        (folder / "fold_4" / "checkpoint_final.pth").unlink()
        return "folds 4 have no finished"
    val = folder / "fold_2" / "validation"
    first = sorted(val.glob("*.npz"))[0]
    if case == "other shape":
        np.savez(first, probabilities=np.zeros((2, 1, 8, 8), np.float32))
        return "shape (2, 1, 8, 8)"
    if case == "other case id":
        first.rename(val / "999_99.npz")
        return "case ids differ"
    if case == "trained without --npz":
        for path in val.glob("*.npz"):
            path.unlink()
        return "--npz"
    if case == "other layout":
        np.savez(first, softmax=np.zeros((2, 1, 4, 4), np.float32))
        return "layout differs"
    if case == "no epoch count":
        (folder / "fold_1" / "debug.json").write_text("{}")
        return "layout differs"
    if case == "3d configuration":
        plans = json.loads((folder / "plans.json").read_text())
        plans["configurations"]["2d"]["patch_size"] = [4, 32, 32]
        (folder / "plans.json").write_text(json.dumps(plans))
        return "not 2-d"
    if case == "test predicted by some folds":
        shutil.rmtree(folder / "fold_5" / "test")
        return "folds 5 have no test/"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "another dataset",
        "not an ichseg export",
        "another split",
        "missing fold",
        "unfinished fold",
        "other shape",
        "other case id",
        "trained without --npz",
        "other layout",
        "no epoch count",
        "3d configuration",
        "test predicted by some folds",
    ],
)
def test_bad_results_are_refused_in_one_line_and_nothing_is_written(sweep, tmp_path, capsys, case):
    dataset = _export(sweep, tmp_path)
    folder = forge_results(dataset, tmp_path / "results", list(range(10)))
    expected = _break(folder, case, dataset)
    before = sorted(p.name for p in sweep.iterdir())
    assert main(["nnunet", "import", str(folder), str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert sorted(p.name for p in sweep.iterdir()) == before


def test_import_never_replaces_a_folder_it_did_not_write(sweep, tmp_path, capsys):
    dataset = _export(sweep, tmp_path)
    folder = forge_results(dataset, tmp_path / "results", list(range(10)), test=False)
    mine = sweep / "nnunet-fold5"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["nnunet", "import", str(folder), str(sweep)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nnunet-fold5" in err and "did not write" in err
    assert (mine / "notes.txt").read_text() == "mine"
    assert not (sweep / "nnunet-fold0").exists()


def test_import_of_some_folds_leaves_the_rest_missing_in_the_report(sweep, tmp_path):
    dataset = _export(sweep, tmp_path)
    folder = forge_results(dataset, tmp_path / "results", [0, 1, 2], test=False)
    with pytest.raises(IchsegError, match="folds 3, 4, 5, 6, 7, 8, 9 have no finished"):
        import_results(folder, sweep)
    import_results(folder, sweep, folds=[0, 1, 2])
    swept = collect_sweep(sweep)
    assert ("nnunet", 3) in swept.missing_jobs and ("nnunet", 0) not in swept.missing_jobs
    # Without test predictions nnU-Net has no test rows; the two networks keep theirs.
    from ichseg.report.selection import select
    from ichseg.report.table import table_rows

    results = evaluate_slices(swept, select(table_rows(swept, "paper"), "paper"), 0)
    assert {r.model for r in results} == {"unet", "dunet"}


@pytest.mark.slow
def test_real_nnunet_trains_on_the_export_and_its_predictions_are_scored(sweep, tmp_path):
    assert Path(NNUNET_PYTHON).is_file(), f"{NNUNET_PYTHON}: no nnU-Net environment; make nnunet"
    work = tmp_path / "nnunet"
    dataset = export_dataset(sweep, work / "raw", 7, work / "preprocessed").dataset_dir
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run(
        [NNUNET_PYTHON, str(SCRIPT), str(work), "7", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    # nnU-Net's own split loading gives exactly ichseg's folds.
    membership = json.loads(run.stdout.strip().splitlines()[-1])
    data = load_prepared(_cache(sweep))
    assert membership == [
        {"train": sorted(f["train"]), "val": sorted(f["val"])} for f in data.splits["folds"]
    ]

    results = work / "results" / dataset.name
    import_results(results, sweep, folds=[0])
    folder = next(results.iterdir())
    ids, target, batch = _val_truth(sweep, 0)
    (record,) = read_records(sweep / "nnunet-fold0")
    assert record["epoch"] == 1
    expected = numpy_protocols(_foreground(folder / "fold_0" / "validation", ids), target, batch)
    for key, value in expected.items():
        assert record["val"][key] == pytest.approx(value, abs=1e-6), key
    # nnU-Net's own hard segmentation is the probabilities thresholded at one half.
    for sid in ids[:3]:
        seg = np.asarray(Image.open(folder / "fold_0" / "validation" / f"{sid}.png"))
        prob = _foreground(folder / "fold_0" / "validation", [sid])[0]
        assert np.array_equal(seg.astype(bool), prob > 0.5)
    computed = compute(collect_sweep(sweep), "paper")
    report = build_report(computed, heldout=score_heldout(computed, tmp_path / "heldout"))
    assert "nnU-Net (own final checkpoint)" in (report / "report.md").read_text()


def _ichseg(args: list, capsys) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.reliability(
    case="second export of another cache, same --dataset-id", entry="ichseg nnunet export"
)
def test_a_second_export_never_replaces_the_first(sweep, tmp_path, capsys, record_behaviour):
    dataset = _export(sweep, tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    release = Path(load_prepared(_cache(sweep)).meta["release_root"])
    other = prepare(release, tmp_path / "cache", PrepareConfig(size=32, seed=1, n_folds=3))
    code, lines = _ichseg(["nnunet", "export", other, tmp_path / "raw", "--dataset-id", 7], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "Dataset007_ICH: holds another ichseg export" in lines[0], lines[0]
    assert "nothing was changed" in lines[0]
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == stamps
    record_behaviour(f"exit 2, the first export untouched: {lines[0]}")


@pytest.mark.reliability(
    case="folds of two nnU-Net trainers into one sweep", entry="ichseg nnunet import"
)
def test_folds_of_another_trainer_are_refused(sweep, tmp_path, capsys, record_behaviour):
    dataset = _export(sweep, tmp_path)
    first = forge_results(dataset, tmp_path / "a", [0, 1], test=False)
    assert main(["nnunet", "import", str(first), str(sweep), "--folds", "0,1"]) == 0
    capsys.readouterr()
    for trainer in (
        "nnUNetTrainer_250epochs__nnUNetPlans__2d",
        "nnUNetTrainer__nnUNetResEncUNetMPlans__2d",
    ):
        other = forge_results(dataset, tmp_path / trainer, [2, 3], test=False, trainer=trainer)
        code, lines = _ichseg(["nnunet", "import", other, sweep, "--folds", "2,3"], capsys)
        assert code == 2 and len(lines) == 1, lines
        assert f"holds nnU-Net folds of {TRAINER} (nnunet-fold0, nnunet-fold1)" in lines[0]
        assert trainer in lines[0] and "nothing was written" in lines[0]
        assert not (sweep / "nnunet-fold2").exists()
    # The same trainer's other folds, and its own folds again, are fine.
    more = forge_results(dataset, tmp_path / "b", [0, 2], test=False)
    assert main(["nnunet", "import", str(more), str(sweep), "--folds", "0,2"]) == 0
    assert read_job(sweep / "nnunet-fold2")["imported_from"]["trainer"] == "nnUNetTrainer"
    record_behaviour(f"exit 2, nothing written: {lines[0]}")


@pytest.mark.reliability(case="3d_fullres results", entry="ichseg nnunet import")
@pytest.mark.parametrize("configuration", ["3d_fullres", "3d_lowres"])
def test_3d_configurations_are_named_and_refused(
    sweep, tmp_path, capsys, configuration, record_behaviour
):
    dataset = _export(sweep, tmp_path)
    trainer = f"nnUNetTrainer__nnUNetPlans__{configuration}"
    folder = forge_results(dataset, tmp_path / "r", [0], test=False, trainer=trainer)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"][configuration]["patch_size"] = [4, 32, 32]
    (folder / "plans.json").write_text(json.dumps(plans))
    # Given the dataset's results folder: the trained-model folder inside is found by name.
    code, lines = _ichseg(["nnunet", "import", folder.parent, sweep, "--folds", "0"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"configuration '{configuration}' is not 2-d" in lines[0], lines[0]
    assert not (sweep / "nnunet-fold0").exists()
    record_behaviour(f"exit 2: {lines[0]}", case=f"{configuration} results")


@pytest.mark.reliability(entry="ichseg nnunet import")
@pytest.mark.parametrize("folds", ["", "a,b", "0,,1", "-1"])
def test_folds_that_are_not_fold_numbers_are_one_line(
    sweep, tmp_path, capsys, folds, record_behaviour
):
    dataset = _export(sweep, tmp_path)
    folder = forge_results(dataset, tmp_path / "r", [0], test=False)
    code, lines = _ichseg(["nnunet", "import", folder, sweep, "--folds", folds], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "--folds: expected comma-separated fold numbers" in lines[0], lines[0]
    assert not (sweep / "nnunet-fold0").exists()
    record_behaviour(f"exit 2: {lines[0]}", case=f"--folds {folds!r}")
