"""No command replaces what another input produced, or what it did not write: predict's outputs
of one input against another of the same name (PACS exports name every folder `DICOM`),
evaluate, prepare and bench output folders holding the user's files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ichseg.cli import main
from ichseg.data.phantom import write_phantom
from ichseg.data.prepare import PrepareConfig, prepare
from tests.helpers.dicom_series import write_series, zip_folder
from tests.helpers.scans import save_scan, with_air

FP32 = ("--precision", "fp32")


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def head(bleed_rows: slice) -> np.ndarray:
    """32×32×4 HU with a bleed on `bleed_rows`: two patients differ by where they bleed."""
    hu = with_air(np.full((32, 32, 4), 30.0))
    hu[10:20, bleed_rows, 1:3] = 200.0
    return hu


def _dicom_folders(tmp: Path) -> tuple[Path, Path]:
    a, b = tmp / "pacs" / "patA" / "DICOM", tmp / "pacs" / "patB" / "DICOM"
    write_series(a, head(slice(5, 10)), description="patient A")
    write_series(b, head(slice(20, 25)), description="patient B")
    return a, b


def _dicom_zips(tmp: Path) -> tuple[Path, Path]:
    a, b = _dicom_folders(tmp)
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    return zip_folder(a, tmp / "a" / "study.zip"), zip_folder(b, tmp / "b" / "study.zip")


def _nifti_files(tmp: Path) -> tuple[Path, Path]:
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    a = save_scan(tmp / "a" / "scan.nii.gz", head(slice(5, 10)))
    return a, save_scan(tmp / "b" / "scan.nii.gz", head(slice(20, 25)))


def _exported_again(tmp: Path) -> tuple[Path, Path]:
    """One folder, exported again with another patient's series: same path, another UID."""
    folder = tmp / "export" / "SE0001"
    write_series(folder, head(slice(5, 10)), description="patient A")
    return folder, folder


INPUTS = {
    "DICOM folders pacs/patA/DICOM and pacs/patB/DICOM": _dicom_folders,
    "zips a/study.zip and b/study.zip": _dicom_zips,
    "NIfTI files a/scan.nii.gz and b/scan.nii.gz": _nifti_files,
    "one folder exported again with another series": _exported_again,
}


@pytest.mark.reliability(entry="ichseg predict")
@pytest.mark.parametrize("inputs", list(INPUTS))
def test_predict_never_replaces_the_outputs_of_another_input_of_the_same_name(
    inputs, ckpts, tmp_path, capsys, record_behaviour
):
    first, second = INPUTS[inputs](tmp_path)
    out = tmp_path / "preds"
    code, _, err = run_cli(["predict", ckpts["pass"], first, "-o", out, "--png", *FP32], capsys)
    assert code == 0, err
    if first == second:  # the folder now holds another patient's series
        for path in first.iterdir():
            path.unlink()
        write_series(first, head(slice(20, 25)), description="patient B")
    before = snapshot(out)
    code, _, err = run_cli(["predict", ckpts["pass"], second, "-o", out, "--png", *FP32], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    stem = first.name.removesuffix(".zip").removesuffix(".nii.gz")
    for needle in (f"{out / stem}.json", str(first.resolve()), str(second.resolve()), "-o"):
        assert needle in lines[0], (needle, lines[0])
    assert snapshot(out) == before, "the first input's outputs are kept, byte for byte"
    record_behaviour(
        f"exit 2, the first input's outputs kept byte for byte: {lines[0]}",
        case=f"predict -o holding another input's outputs of the same name: {inputs}",
        did="ichseg predict CKPT FIRST -o preds, then ichseg predict CKPT SECOND -o preds",
    )


def test_the_same_input_replaces_its_own_outputs_and_they_record_it(ckpts, tmp_path, capsys):
    folder = tmp_path / "pacs" / "patA" / "DICOM"
    write_series(folder, head(slice(5, 10)), description="patient A")
    out = tmp_path / "preds"
    assert run_cli(["predict", ckpts["pass"], folder, "-o", out, *FP32], capsys)[0] == 0
    summary = json.loads((out / "DICOM.json").read_text())
    uid = summary["dicom"]["series_instance_uid"]
    assert summary["input"] == {"path": str(folder.resolve()), "series_instance_uid": uid}
    # The same folder by another spelling (relative, through a link) is the same input.
    link = tmp_path / "link"
    link.symlink_to(folder.parent.parent)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        again = Path("link") / "patA" / "DICOM"
        code, _, err = run_cli(["predict", ckpts["a"], again, "-o", out, *FP32], capsys)
    finally:
        os.chdir(cwd)
    assert code == 0, err
    replaced = json.loads((out / "DICOM.json").read_text())
    assert replaced["checkpoints"] == [str(ckpts["a"])] and replaced["input"] == summary["input"]


@pytest.mark.parametrize("same", [True, False], ids=["same-scan", "other-scan"])
def test_a_summary_of_an_older_ichseg_counts_by_its_scan_path(same, ckpts, tmp_path, capsys):
    """Summaries written before they recorded their input: the same input only if their `scan`
    resolves to the same path."""
    a, b = _nifti_files(tmp_path)
    out = tmp_path / "preds"
    assert run_cli(["predict", ckpts["pass"], a, "-o", out, *FP32], capsys)[0] == 0
    summary = json.loads((out / "scan.json").read_text())
    del summary["input"]
    (out / "scan.json").write_text(json.dumps(summary))
    code, _, err = run_cli(["predict", ckpts["a"], a if same else b, "-o", out, *FP32], capsys)
    if same:
        assert code == 0, err
        assert json.loads((out / "scan.json").read_text())["checkpoints"] == [str(ckpts["a"])]
    else:
        assert code == 2 and str(a) in err and str(b) in err, err
        assert json.loads((out / "scan.json").read_text()) == summary


def test_a_seg_and_png_the_new_prediction_does_not_write_are_removed(ckpts, tmp_path, capsys):
    """An earlier SEG or PNG of the same input would read as this prediction's; a file of the
    same name that no earlier summary names is the user's and is kept."""
    folder = tmp_path / "DICOM"
    write_series(folder, head(slice(5, 10)))
    out = tmp_path / "preds"
    argv = ["predict", ckpts["pass"], folder, "-o", out, *FP32]
    assert run_cli([*argv, "--png"], capsys)[0] == 0
    assert {"DICOM_seg.dcm", "DICOM_summary.png"} <= set(snapshot(out))
    code, _, err = run_cli([*argv, "--no-seg"], capsys)
    assert code == 0, err
    assert sorted(snapshot(out)) == ["DICOM.json", "DICOM_mask.nii.gz"]
    (out / "DICOM_summary.png").write_bytes(b"the user's own picture")
    code, _, err = run_cli([*argv, "--no-seg"], capsys)
    assert code == 0, err
    assert (out / "DICOM_summary.png").read_bytes() == b"the user's own picture"


# --- the other commands that write ----------------------------------------------------------


@pytest.fixture(scope="module")
def external(tmp_path_factory) -> tuple[Path, Path]:
    from tests.helpers.checkpoints import PRE, passthrough_module, save_checkpoint

    root = tmp_path_factory.mktemp("owned")
    ckpt = save_checkpoint(passthrough_module(), root / "pass.ckpt", PRE)
    return ckpt, write_phantom(root / "bhsd", patients=2, size=32, seed=2, layout="bhsd")


def _user_summary(out: Path) -> None:
    out.mkdir()
    (out / "summary.json").write_text('{"the user": "own numbers"}\n')


def _user_patients(out: Path) -> None:
    out.mkdir()
    (out / "patients.csv").write_text("id,age\n1,64\n")


def _user_file(out: Path) -> None:
    out.write_text("notes\n")


@pytest.mark.reliability(entry="ichseg evaluate -o")
@pytest.mark.parametrize(
    ("case", "make"),
    [
        ("a folder holding the user's summary.json", _user_summary),
        ("a folder holding the user's patients.csv", _user_patients),
        ("a file", _user_file),
    ],
    ids=["summary", "patients", "file"],
)
def test_evaluate_never_writes_into_what_the_user_has(
    case, make, external, tmp_path, capsys, record_behaviour
):
    ckpt, root = external
    out = tmp_path / "eval"
    make(out)
    before = out.read_bytes() if out.is_file() else snapshot(out)
    argv = ["evaluate", ckpt, "--source", "bhsd", "--root", root, "-o", out, *FP32]
    code, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(out) in lines[0], err
    assert (out.read_bytes() if out.is_file() else snapshot(out)) == before
    record_behaviour(
        f"exit 2, nothing replaced: {lines[0]}",
        case=f"evaluate -o onto {case}",
        did=f"ichseg evaluate CKPT --source bhsd --root DIR -o <{case}>",
    )


def test_evaluate_replaces_its_own_earlier_evaluation(external, tmp_path, capsys):
    ckpt, root = external
    out = tmp_path / "eval"
    argv = ["evaluate", ckpt, "--source", "bhsd", "--root", root, "-o", out, *FP32]
    assert run_cli(argv, capsys)[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    summary["flip_tta"] = "an earlier run's"
    (out / "summary.json").write_text(json.dumps(summary))
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["flip_tta"] is False


@pytest.mark.reliability(
    case="prepare OUT whose cache folder holds the user's files",
    did="OUT/<cache key>/ made by the user (notes.txt), then ichseg prepare RELEASE OUT",
    entry="ichseg prepare",
)
def test_prepare_never_writes_into_a_folder_it_did_not_make(
    release, tmp_path, capsys, record_behaviour
):
    key = prepare(release, tmp_path / "first", PrepareConfig(size=16, n_folds=2)).name
    mine = tmp_path / "out" / key
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine\n")
    argv = ["prepare", release, tmp_path / "out", "--size", 16, "--n-folds", 2]
    code, _, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and key in lines[0], err
    assert snapshot(tmp_path / "out") == {f"{key}/notes.txt": b"mine\n"}
    record_behaviour(f"exit 2, the folder left as it was: {lines[0]}")


@pytest.mark.reliability(
    case="bench --out onto a folder holding the user's files and an earlier bench",
    did="ichseg bench --out DIR, DIR holding notes.txt and an earlier bench-*.json",
    entry="ichseg bench --out",
)
def test_bench_adds_its_json_beside_what_the_folder_holds(
    tmp_path, capsys, monkeypatch, record_behaviour
):
    monkeypatch.setenv("ICHSEG_ROOT", str(tmp_path))
    out = tmp_path / "bench"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    (out / "bench-20260101T000000Z.json").write_text("{}\n")
    before = snapshot(out)
    argv = ["bench", "--experiments", "tiny", "--models", "dunet", "--sections", "train"]
    fast = ["--repeats", 2, "--warmup-steps", 1, "--warmup-s", 0, "--window-s", 0]
    code, _, err = run_cli([*argv, *fast, "--monai-workers", 0, "--out", out], capsys)
    assert code == 0, err
    after = snapshot(out)
    added = sorted(set(after) - set(before))
    assert {k: after[k] for k in before} == before
    assert len(added) == 1 and added[0].startswith("bench-") and added[0].endswith(".json")
    record_behaviour(f"exit 0, both kept byte for byte, {added[0]} added beside them")
