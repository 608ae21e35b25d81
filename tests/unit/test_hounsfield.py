"""Volumes are checked to be CT in Hounsfield units before anything is computed: through
`ichseg predict`, `ichseg prepare` and `ichseg evaluate`, refused in one line with the likely
cause, and let through (and recorded) with --allow-non-hu; real CT layouts pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichseg.cli import main
from ichseg.data.phantom import write_phantom
from ichseg.data.prepare import PrepareConfig, prepare
from ichseg.data.release import PhysioNetRelease
from ichseg.data.sources import LAYOUT_SOURCES
from tests.helpers.checkpoints import PRE64, passthrough_module, save_checkpoint, split_of
from tests.helpers.scans import ZOOMS, save_scan

AFFINE = np.diag([*ZOOMS, 1.0])


def run(argv: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def head(size: int = 64, slices: int = 4, outside: float = -1000.0) -> np.ndarray:
    """A head in HU: brain (35) in a skull (1200) in air (-1000), `outside` beyond a circular
    field of view, a bleed (70) and noise."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    r = np.hypot(x / 0.75, y / 0.9)
    base = np.where(r < 0.85, 35.0, np.where(r < 0.95, 1200.0, -1000.0))
    base[(x - 0.2) ** 2 + (y + 0.1) ** 2 < 0.02] = 70.0
    base[np.hypot(x, y) > 1.0] = outside
    noise = np.random.default_rng(0).normal(0, 5, (size, size, slices))
    return base[:, :, None] + noise * (base[:, :, None] > -1500)


def save_raw(path: Path, data: np.ndarray) -> Path:
    """`data` stored as it is, without slope or intercept."""
    image = nib.Nifti1Image(data, AFFINE)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path


# case -> (how the volume was written, a fragment the line must hold)
NOT_HU = {
    "HU+1024 without its intercept": (
        lambda p: save_raw(p, np.clip(head() + 1024, 0, None).astype(np.uint16)),
        "HU+1024 stored without its intercept",
    ),
    "HU+1024 in float, no intercept": (
        lambda p: save_raw(p, (head() + 1024).astype(np.float32)),
        "HU+1024 stored without its intercept",
    ),
    "scan x1e30": (
        lambda p: save_raw(p, (head() * 1e30).astype(np.float32)),
        "outside the 16-bit range",
    ),
    "scan x1000": (
        lambda p: save_raw(p, (head() * 1000).astype(np.float32)),
        "outside the 16-bit range",
    ),
    "0/1 mask given as the scan": (
        lambda p: save_raw(p, (head() > 50).astype(np.uint8)),
        "looks like a 0/1 mask",
    ),
    "intensities scaled to 0..1": (
        lambda p: save_raw(p, ((head() + 1000) / 2200).clip(0, 1).astype(np.float32)),
        "scaled to 0..1",
    ),
    "8-bit picture": (
        lambda p: save_raw(p, ((head() + 1000) / 2200 * 255).clip(0, 255).astype(np.uint8)),
        "8-bit picture",
    ),
    "air only, no head": (
        lambda p: save_raw(p, head().clip(None, -900).astype(np.float32)),
        "no head in the volume",
    ),
    "air and skull, no brain": (
        lambda p: save_raw(p, np.where(head() > 300, head(), -1000.0).astype(np.float32)),
        "no head in the volume",
    ),
    "complex-valued scan": (
        lambda p: save_raw(p, head().astype(np.complex64)),
        "complex-valued",
    ),
}


@pytest.mark.reliability(entry="ichseg predict")
@pytest.mark.parametrize("case", NOT_HU)
def test_predict_refuses_a_scan_not_in_hu(case, ckpts, tmp_path, capsys, record_behaviour):
    write, fragment = NOT_HU[case]
    scan = write(tmp_path / "scan.nii")
    code, out, err = run(["predict", ckpts["pass"], scan, "-o", tmp_path / "out"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert str(scan) in lines[0] and fragment in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and not out
    record_behaviour(f"exit 2, nothing written: {lines[0]}", case=case)


@pytest.mark.reliability(case="--allow-non-hu goes on, recorded", entry="ichseg predict")
def test_allow_non_hu_goes_on_and_is_recorded(ckpts, tmp_path, capsys, record_behaviour):
    scan = NOT_HU["HU+1024 without its intercept"][0](tmp_path / "scan.nii")
    args = ["predict", ckpts["pass"], scan, "-o", tmp_path / "out", "--allow-non-hu"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert summary["allow_non_hu"] is True
    complex_scan = NOT_HU["complex-valued scan"][0](tmp_path / "complex.nii")
    args = ["predict", ckpts["pass"], complex_scan, "-o", tmp_path / "out2", "--allow-non-hu"]
    code, _, err = run(args, capsys)
    assert code == 2 and "complex-valued" in err  # no flag makes a complex number HU
    record_behaviour(f"exit 0, summary allow_non_hu true: {out.splitlines()[0]}")


# Real CT layouts that must pass: padding outside the field of view, cropped heads, int16.
REAL_CT = {
    "padding -2048 outside the field of view": lambda: head(outside=-2048.0),
    "padding -3024 outside the field of view": lambda: head(outside=-3024.0),
    "padding -32768 outside the field of view": lambda: head(outside=-32768.0),
    "head cropped to the skull": lambda: head(96)[14:82, 22:74],
    "a single slice": lambda: head(slices=1),
}


@pytest.mark.parametrize("case", REAL_CT)
def test_real_ct_layouts_pass(case, ckpts, tmp_path, capsys):
    hu = REAL_CT[case]()
    scan = save_scan(tmp_path / "scan.nii", hu)
    code, _, err = run(["predict", ckpts["pass"], scan, "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert summary["allow_non_hu"] is False


def test_the_phantom_passes(tmp_path):
    release = PhysioNetRelease.open(write_phantom(tmp_path / "p", patients=4, size=64, seed=3))
    for patient in release.patients:
        release.load_patient(patient)  # raises on a volume that is not CT in HU


def _break_scan(release: Path, patient: int) -> Path:
    """Rewrite one scan of `release` as HU+1024 stored without its intercept."""
    path = PhysioNetRelease.open(release).scan_path(patient)
    image = nib.load(path)
    hu = image.get_fdata()
    broken = nib.Nifti1Image(np.clip(hu + 1024, 0, None).astype(np.uint16), image.affine)
    nib.save(broken, path)
    return path


@pytest.mark.reliability(case="release scan stored as HU+1024", entry="ichseg prepare")
def test_prepare_refuses_a_release_scan_not_in_hu(release, tmp_path, capsys, record_behaviour):
    root = tmp_path / "release"
    shutil.copytree(release, root)
    patient = PhysioNetRelease.open(root).patients[2]
    name = _break_scan(root, patient).relative_to(root)
    code, _, err = run(["prepare", root, tmp_path / "cache", "--size", "32"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"{name} (patient {patient})" in lines[0] and "HU+1024" in lines[0], lines[0]
    assert not any((tmp_path / "cache").glob("*/meta.json"))
    args = ["prepare", root, tmp_path / "cache", "--size", "32", "--allow-non-hu"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    meta = json.loads(next((tmp_path / "cache").glob("*/meta.json")).read_text())
    assert meta["allow_non_hu"] is True
    # The unchecked cache is a cache of its own: a checked run never reuses it.
    code, _, err = run(["prepare", root, tmp_path / "cache", "--size", "32"], capsys)
    assert code == 2 and "HU+1024" in err
    record_behaviour(f"exit 2: {lines[0]}; with --allow-non-hu: exit 0, meta.json records it")


@pytest.mark.reliability(case="held-out scan stored as HU+1024", entry="ichseg evaluate")
def test_evaluate_refuses_a_scan_not_in_hu(tmp_path, capsys, record_behaviour):
    release = write_phantom(tmp_path / "phantom", patients=12, size=64, seed=0)
    cache = prepare(release, tmp_path / "cache", PrepareConfig(size=64, split="patient", n_folds=2))
    split = split_of(cache)
    ckpt = save_checkpoint(passthrough_module(), tmp_path / "pass.ckpt", PRE64, split=split)
    splits = json.loads((cache / "splits.json").read_text())
    test_patient = sorted({int(sid[:3]) for sid in splits["test"]})[0]
    name = _break_scan(release, test_patient).relative_to(release)
    args = ["evaluate", ckpt, "--release", release, "--splits", cache, "-o", tmp_path / "eval"]
    code, _, err = run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert str(name) in lines[0] and "HU+1024" in lines[0], lines[0]
    # The refusal came while reading the held-out volumes: the folder it had made is gone.
    assert not (tmp_path / "eval").exists()
    code, _, err = run([*args, "--allow-non-hu"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["allow_non_hu"] is True
    record_behaviour(f"exit 2: {lines[0]}; with --allow-non-hu: exit 0, summary.json records it")


@pytest.mark.reliability(case="failure mid-way through several scans", entry="ichseg predict")
def test_failure_midway_names_what_was_written(
    ckpts, tmp_path, capsys, monkeypatch, record_behaviour
):
    from ichseg.inference.volumes import VolumeEnsemble

    scans = [save_scan(tmp_path / f"s{i}.nii", head()) for i in range(3)]
    predict, calls = VolumeEnsemble.predict, []

    def full_disk_at_the_second(self, hu):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return predict(self, hu)

    monkeypatch.setattr(VolumeEnsemble, "predict", full_disk_at_the_second)
    code, _, err = run(["predict", ckpts["pass"], *scans, "-o", tmp_path / "out"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "stopped at scan 2 of 3 (s1.nii)" in lines[0], lines[0]
    assert "written to" in lines[0] and "s0_mask.nii.gz, s0.json" in lines[0], lines[0]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["s0.json", "s0_mask.nii.gz"]
    record_behaviour(f"exit 2: {lines[0]}", did="disk full while predicting the 2nd of 3 scans")


@pytest.mark.reliability(case="failure at the first of several scans", entry="ichseg predict")
@pytest.mark.parametrize("out_exists", [False, True], ids=["new OUT", "OUT of the user"])
def test_failure_before_any_output_leaves_no_folder_it_made(
    out_exists, ckpts, tmp_path, capsys, monkeypatch, record_behaviour
):
    from ichseg.inference.volumes import VolumeEnsemble

    def full_disk(self, hu):
        raise OSError(28, "No space left on device")

    scans = [save_scan(tmp_path / f"s{i}.nii", head()) for i in range(2)]
    out = tmp_path / "new" / "out"
    if out_exists:
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("mine\n")
    monkeypatch.setattr(VolumeEnsemble, "predict", full_disk)
    code, _, err = run(["predict", ckpts["pass"], *scans, "-o", out], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"stopped at scan 1 of 2 (s0.nii); nothing was written to {out}" in lines[0], lines[0]
    if out_exists:
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    else:
        assert not (tmp_path / "new").exists()
        record_behaviour(
            f"exit 2, neither OUT nor its new parent left: {lines[0]}",
            did="disk full while predicting the 1st of 2 scans into a new OUT/parent",
        )


@pytest.mark.reliability(entry="ichseg prepare --source")
@pytest.mark.parametrize("layout", ["instance22", "bhsd", "nnunet_raw"])
def test_every_source_refuses_a_scan_not_in_hu(layout, tmp_path, capsys, record_behaviour):
    root = write_phantom(tmp_path / layout, patients=12, size=32, layout=layout)
    release = LAYOUT_SOURCES[layout](str(root)).open()
    path = release.scan_path(release.patients[3])
    image = nib.load(path)
    shifted = np.clip(image.get_fdata() + 1024, 0, None).astype(np.uint16)
    nib.save(nib.Nifti1Image(shifted, image.affine), path)
    args = ["prepare", root, tmp_path / "cache", "--source", layout, "--size", "32"]
    code, _, err = run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert path.relative_to(root).as_posix() in lines[0] and "HU+1024" in lines[0], lines[0]
    assert not any((tmp_path / "cache").glob("*/meta.json"))
    code, _, err = run([*args, "--allow-non-hu"], capsys)
    assert code == 0, err
    record_behaviour(f"exit 2: {lines[0]}", case=f"{layout} scan stored as HU+1024")


# A head whose stored axis 1 runs head to foot (its slices), axes 0 and 2 in-plane.
CORONAL_LAST = np.array([[-0.5, 0, 0, 0], [0, 0, 0.5, 0], [0, 5.0, 0, 0], [0, 0, 0, 1.0]])


@pytest.mark.reliability(
    case="size of the axial slices, not of the stored axes", entry="ichseg predict"
)
def test_in_plane_size_is_that_of_the_axial_slices(ckpts, tmp_path, capsys, record_behaviour):
    stored = np.ascontiguousarray(head(64, slices=10).transpose(0, 2, 1))  # (64, 10, 64)
    upright = save_scan(tmp_path / "upright.nii", stored, CORONAL_LAST)
    code, _, err = run(["predict", ckpts["pass"], upright, "-o", tmp_path / "a"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "upright.json").read_text())["axial_axis"] == 1
    # The same array with the last axis axial has 64x10 slices: too small.
    flat = save_scan(tmp_path / "flat.nii", stored)
    code, _, err = run(["predict", ckpts["pass"], flat, "-o", tmp_path / "b"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "in-plane size 64x10" in lines[0], err
    record_behaviour(f"(64, 10, 64) with axis 1 axial: exit 0; with axis 2 axial: {lines[0]}")
