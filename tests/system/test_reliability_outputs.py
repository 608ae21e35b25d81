"""Nothing the user has is overwritten, and no clinical or held-out number is silently wrong:
phantom and report outputs, voxel sizes behind mL, evaluation of checkpoints on unseen patients,
non-finite folds and incomplete sweeps in the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichseg.checkpoint import load_checkpoint
from ichseg.cli import main
from ichseg.data.phantom import write_phantom
from ichseg.data.prepare import PrepareConfig, prepare
from ichseg.jobs.records import read_job, read_records, write_job
from ichseg.report.commands import EXIT_INCOMPLETE
from tests.helpers.checkpoints import PRE64, passthrough_module, save_checkpoint, split_of
from tests.helpers.runs import copy_or_link
from tests.helpers.scans import save_scan, with_air


def run(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (or the file itself), by relative path, with its bytes."""
    if folder.is_file():
        return {".": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- ichseg phantom OUT ----------------------------------------------------------------------


def _real_release(out: Path) -> None:
    """A release as a download leaves it: the real layout, no phantom marker."""
    write_phantom(out, patients=2, size=16, seed=5)
    (out / "phantom.json").unlink()


def _other_phantom(out: Path) -> None:
    write_phantom(out, patients=3, size=16, seed=0)


def _user_file(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("notes\n")


@pytest.mark.reliability(entry="ichseg phantom")
@pytest.mark.parametrize(
    ("case", "make", "needle"),
    [
        ("phantom into a real release", _real_release, "not a phantom release"),
        ("phantom into a phantom of other parameters", _other_phantom, "holds a phantom with"),
        ("phantom onto a file", _user_file, "exists and is not a folder"),
    ],
    ids=["real-release", "other-phantom", "file"],
)
def test_phantom_never_touches_an_existing_folder(
    tmp_path, capsys, record_behaviour, case, make, needle
):
    out = tmp_path / "release"
    make(out)
    before = snapshot(out)
    code, _, err = run(["phantom", out, "--patients", 2, "--size", 16, "--seed", 0], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".release.tmp")] == []
    record_behaviour(f"exit 2, every byte left as it was: {err.strip()}", case=case)


@pytest.mark.reliability(case="phantom into the same phantom", entry="ichseg phantom")
def test_phantom_into_the_same_phantom_writes_nothing(tmp_path, capsys, record_behaviour):
    out = tmp_path / "release"
    args = ["phantom", out, "--patients", 2, "--size", 16, "--seed", 0]
    assert run(args, capsys)[0] == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, stdout, _ = run(args, capsys)
    assert code == 0 and "nothing written" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    record_behaviour(
        f"exit 0, no file rewritten: {stdout.strip()}",
        did="ichseg phantom OUT twice with the same --patients/--size/--seed",
    )


# --- ichseg report --out ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.reliability(entry="ichseg report --out")
@pytest.mark.parametrize("kind", ["folder", "file", "job folder"])
def test_report_out_never_replaces_what_the_user_has(
    finished_sweep, tmp_path, capsys, record_behaviour, kind
):
    if kind == "folder":
        out = tmp_path / "documents"
        out.mkdir()
        (out / "thesis.tex").write_text("chapter one\n")
    elif kind == "file":
        out = tmp_path / "notes.txt"
        out.write_text("notes\n")
    else:  # a job folder of the sweep itself
        out = tmp_path / "job"
        shutil.copytree(finished_sweep / "dunet-fold0", out, copy_function=copy_or_link)
    before = snapshot(out)
    code, _, err = run(["report", finished_sweep, "--no-test", "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(out) in err, err
    assert snapshot(out) == before
    record_behaviour(
        f"exit 2, nothing replaced: {err.strip()}",
        case=f"report --out onto a {kind} the user has",
        did=f"ichseg report SWEEP --out <a {kind} holding the user's files>",
    )


@pytest.mark.slow
def test_report_out_replaces_its_own_report(finished_sweep, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["report", finished_sweep, "--no-test", "--out", out]
    assert run(args, capsys)[0] == 0
    assert run(args, capsys)[0] == 0 and (out / "report.md").is_file()


# --- voxel sizes behind a volume in mL -------------------------------------------------------


def _with_pixdim(path: Path, pixdim: tuple[float, float, float]) -> Path:
    """Set the header's voxel sizes to `pixdim`, keeping the affine as the sform; the bytes are
    patched after saving because nibabel's writer would fix a zero pixdim."""
    image = nib.load(path)
    out = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header.copy())
    out.set_sform(image.affine, code=1)
    out.set_qform(None, code=0)
    nib.save(out, path)
    raw = bytearray(path.read_bytes())
    raw[80:92] = np.asarray(pixdim, dtype="<f4").tobytes()  # pixdim[1:4] of a NIfTI-1 header
    path.write_bytes(bytes(raw))
    return path


BAD_PIXDIM = {
    "zero voxel sizes": ((0.0, 0.0, 0.0), "not positive finite"),
    "one zero voxel size": ((0.5, 0.4, 0.0), "not positive finite"),
    "NaN voxel size": ((float("nan"), 0.4, 5.0), "not positive finite"),
    "voxel sizes disagreeing with the affine": ((1.0, 1.0, 1.0), "disagree with the affine"),
}


@pytest.mark.reliability(entry="ichseg predict")
@pytest.mark.parametrize("case", list(BAD_PIXDIM))
def test_predict_refuses_a_volume_from_unusable_voxel_sizes(
    ckpts,
    tmp_path,
    capsys,
    record_behaviour,
    case,
):
    pixdim, needle = BAD_PIXDIM[case]
    hu = np.full((32, 32, 4), -1000.0)
    scan = _with_pixdim(save_scan(tmp_path / "scan.nii", hu), pixdim)
    out = tmp_path / "out"
    code, _, err = run(["predict", ckpts["pass32"], scan, "-o", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert needle in err and str(scan) in err
    assert not out.exists() or not any(out.iterdir())
    record_behaviour(
        f"exit 2, no mask or mL written: {err.strip()}",
        case=f"scan with {case}",
        did=f"header pixdim[1:4] set to {pixdim}, affine (0.5, 0.4, 5.0) mm kept",
    )


# --- ichseg evaluate: checkpoints that never saw the patients they score ---------------------


@pytest.fixture(scope="module")
def patient_cache(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("heldout")
    release = write_phantom(root / "phantom", patients=12, size=64, seed=0)
    cache = prepare(release, root / "cache", PrepareConfig(size=64, split="patient", n_folds=2))
    return release, cache


def _checkpoint_with(split: dict | None, out: Path) -> Path:
    """The pass-through network's checkpoint, carrying `split` (None: no split record)."""
    return save_checkpoint(passthrough_module(), out, PRE64, split=split)


@pytest.mark.reliability(entry="ichseg evaluate")
@pytest.mark.parametrize("case", ["no split record", "trained on the scored patients"])
def test_evaluate_refuses_checkpoints_that_may_have_seen_its_patients(
    patient_cache,
    tmp_path,
    capsys,
    record_behaviour,
    case,
):
    release, cache = patient_cache
    split = None if case == "no split record" else split_of(cache, leak=True)
    ckpt = _checkpoint_with(split, tmp_path / "model.ckpt")
    out = tmp_path / "eval"
    code, _, err = run(
        ["evaluate", ckpt, "--release", release, "--splits", cache, "-o", out], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(ckpt) in err, err
    assert not out.exists()
    record_behaviour(
        f"exit 2, nothing written: {err.strip()}",
        case=f"evaluate a checkpoint with {case}",
        did="a patient-split cache's test patients scored with a checkpoint "
        + ("saved without ichseg_split" if split is None else "whose training split holds them"),
    )


@pytest.mark.reliability(case="evaluate records the checkpoints' split", entry="ichseg evaluate")
def test_evaluate_records_each_checkpoints_split(
    patient_cache,
    tmp_path,
    capsys,
    record_behaviour,
):
    release, cache = patient_cache
    ckpt = _checkpoint_with(split_of(cache, fold=1), tmp_path / "model.ckpt")
    out = tmp_path / "eval"
    args = ["evaluate", ckpt, "--release", release, "--splits", cache, "-o", out]
    code, _, err = run([*args, "--precision", "fp32"], capsys)
    assert code == 0, err
    (record,) = json.loads((out / "summary.json").read_text())["checkpoint_splits"]
    assert record["mode"] == "patient" and record["fold"] == 1
    assert record["cache_key"] == cache.name and record["n_train_patients"] > 0
    record_behaviour(
        f"exit 0; summary.json checkpoint_splits: {record}",
        did="evaluate a checkpoint whose split record holds none of the test patients",
    )


@pytest.mark.slow
def test_trained_checkpoints_carry_their_split(finished_sweep):
    job = finished_sweep / "dunet-fold3"
    split = load_checkpoint(job / "checkpoints" / "last.ckpt").split
    splits = json.loads((Path(read_job(job)["cache_dir"]) / "splits.json").read_text())
    assert split["fold"] == 3 and split["mode"] == splits["mode"]
    trained = {int(sid[:3]) for sid in splits["folds"][3]["train"]}
    assert set(split["train_patients"]) == trained


# --- the report: non-finite folds, incomplete sweeps -----------------------------------------


@pytest.fixture
def sweep_copy(finished_sweep, tmp_path) -> Path:
    copy = tmp_path / "tiny" / "s1"
    shutil.copytree(finished_sweep, copy, symlinks=True, copy_function=copy_or_link)
    shutil.rmtree(copy / "report", ignore_errors=True)
    return copy


@pytest.mark.slow
@pytest.mark.reliability(case="a fold with a non-finite metric", entry="ichseg report")
@pytest.mark.parametrize("value", [None, float("nan")], ids=["null", "NaN"])
def test_report_flags_a_non_finite_fold_instead_of_averaging_around_it(
    sweep_copy, capsys, record_behaviour, value
):
    job = sweep_copy / "dunet-fold4"
    rows = read_records(job)
    epoch = rows[-1]["epoch"]
    rows[-1]["val"]["dice_paper"] = value
    (job / "records.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    code, _, err = run(["report", sweep_copy, "--no-test"], capsys)
    assert code == 0, err
    report = (sweep_copy / "report" / "report.md").read_text()
    flagged = [ln for ln in report.splitlines() if "1 of 10 folds not finite" in ln]
    assert flagged and all(f"| {epoch} " in ln for ln in flagged), flagged
    csv_rows = (sweep_copy / "report" / "table1.csv").read_text().splitlines()
    row = next(r for r in csv_rows if r.startswith(f"dunet,{epoch},paper,"))
    assert row.split(",")[7] == "", row  # val Dice mean: empty, not a mean over 9 folds
    record_behaviour(
        f"the Table 1 cell reads 'NA: 1 of 10 folds not finite' (was a mean over 9 folds), "
        f"table1.csv leaves it empty and the epoch cannot be selected; {flagged[0].strip()}",
        did=f"val dice_paper of dunet fold 4 at epoch {epoch} set to {value} in records.jsonl",
    )


@pytest.mark.slow
@pytest.mark.reliability(entry="ichseg report")
@pytest.mark.parametrize("case", ["a job still running", "a job failed", "a job never started"])
def test_report_of_an_incomplete_sweep_says_so_and_exits_3(
    sweep_copy, capsys, record_behaviour, case
):
    job = sweep_copy / "unet-fold2"
    if case == "a job never started":
        shutil.rmtree(job)
    else:
        status = "running" if case == "a job still running" else "failed"
        write_job(job, {**read_job(job), "status": status})
    code, stdout, err = run(["report", sweep_copy, "--no-test"], capsys)
    assert code == EXIT_INCOMPLETE == 3, err
    assert "report written" in stdout and (sweep_copy / "report" / "report.md").is_file()
    line = err.strip()
    assert len(line.splitlines()) == 1 and "incomplete sweep" in line and "unet-fold2" in line
    record_behaviour(
        f"exit 3, report written; stderr: {line}",
        case=f"report of a sweep with {case}",
        did=f"{case}: unet-fold2 of a finished 20-job sweep",
    )


# --- ichseg predict -o OUT -------------------------------------------------------------------


@pytest.mark.reliability(entry="ichseg predict")
@pytest.mark.parametrize("name", ["scan_mask.nii.gz", "scan.json"])
def test_predict_never_replaces_a_file_it_did_not_write(
    ckpts,
    tmp_path,
    capsys,
    record_behaviour,
    name,
):
    scan = save_scan(tmp_path / "scan.nii", with_air(np.full((32, 32, 4), 60.0)))
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"the user's own file")
    code, _, err = run(["predict", ckpts["pass32"], scan, "-o", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and name in err, err
    assert snapshot(out) == {name: b"the user's own file"}
    record_behaviour(
        f"exit 2, the file is kept: {err.strip()}",
        case=f"predict into a folder holding a {name.split('.', 1)[1]} of the same name",
        did=f"OUT/{name} written by the user, then ichseg predict CKPT scan.nii -o OUT",
    )


def test_predict_replaces_its_own_earlier_prediction(ckpts, tmp_path, capsys):
    scan = save_scan(tmp_path / "scan.nii", with_air(np.full((32, 32, 4), 60.0)))
    args = ["predict", ckpts["pass32"], scan, "-o", tmp_path / "out", "--precision", "fp32"]
    assert run(args, capsys)[0] == 0
    assert run(args, capsys)[0] == 0
