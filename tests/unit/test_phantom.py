"""The synthetic release: valid layout, deterministic, real-release statistics, CT-like values."""

from __future__ import annotations

import multiprocessing
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from ichseg.data.phantom import (
    PATIENT_NUMBERS,
    SUBTYPES,
    ensure_phantom,
    phantom_labels,
    plan_phantom,
    render_patient,
    to_stored,
    write_phantom,
)
from ichseg.data.release import PhysioNetRelease
from ichseg.errors import IchsegError


def test_small_phantom_passes_full_validation(tmp_path: Path) -> None:
    root = write_phantom(tmp_path / "ph", patients=4, size=48, seed=0)
    release = PhysioNetRelease.open(root)
    assert release.patients == [49, 50, 51, 52]
    assert release.labels == phantom_labels(plan_phantom(4, 0))
    assert any(label.has_ich for label in release.labels)
    for patient in release.patients:
        volume = release.load_patient(patient)
        assert volume.hu.shape[:2] == (48, 48)
        assert 0.31 * 512 / 48 <= volume.zooms[0] == volume.zooms[1] <= 0.48 * 512 / 48
        assert volume.zooms[2] == 5.0
        # Stored rotated: rot90(k=1) shows the head upright, longer front-to-back than wide.
        head = np.rot90(volume.hu[..., volume.hu.shape[2] // 2], k=1) > -500
        assert head.any(axis=1).sum() > head.any(axis=0).sum()
    demographics = release.read_demographics()
    assert [int(row["Patient Number"]) for row in demographics] == release.patients
    assert "synthetic" in (root / "Read_me.txt").read_text().lower()


def test_stored_orientation_round_trips() -> None:
    upright = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    stored = to_stored(upright)
    assert stored.shape == (4, 3, 2)
    for k in range(2):
        np.testing.assert_array_equal(np.rot90(stored[..., k], k=1), upright[k])


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = _files(write_phantom(tmp_path / "a", patients=2, size=32, seed=3))
    again = _files(write_phantom(tmp_path / "b", patients=2, size=32, seed=3))
    other = _files(write_phantom(tmp_path / "c", patients=2, size=32, seed=4))
    assert first == again
    assert first.keys() == other.keys()
    assert first["ct_scans/049.nii"] != other["ct_scans/049.nii"]


def test_label_statistics_follow_the_real_release() -> None:
    plans = plan_phantom(75, seed=0)
    labels = phantom_labels(plans)
    assert [plan.patient for plan in plans] == list(PATIENT_NUMBERS)
    assert len(plans) == 75 and 49 in PATIENT_NUMBERS and 60 not in PATIENT_NUMBERS
    slices = np.array([plan.n_slices for plan in plans])
    assert slices.min() >= 31 and slices.max() <= 58
    assert 0.85 * 2814 <= len(labels) <= 1.15 * 2814
    ich = np.array([label.has_ich for label in labels])
    assert 0.08 <= ich.mean() <= 0.15  # real: 318 / 2814 = 11 %
    subtypes = np.array([label.subtypes for label in labels])
    assert (subtypes.sum(axis=0) > 0).all()  # all five subtypes present
    np.testing.assert_array_equal(subtypes.any(axis=1), ich)
    assert 30 <= sum(bool(plan.bleeds) for plan in plans) <= 42  # real: 36 patients
    assert (subtypes.sum(axis=1) > 1).sum() > 0
    fracture = np.array([label.fracture for label in labels], dtype=bool)
    assert 120 <= fracture.sum() <= 300  # real: 196
    epidural = subtypes[:, SUBTYPES.index("Epidural")] == 1
    assert fracture[epidural].mean() > 3 * fracture[~epidural].mean()
    # Bleeds span runs of consecutive slices.
    for plan in plans:
        flags = np.array([label.subtypes for label in plan.labels()])
        for column in flags.T:
            run = np.flatnonzero(column)
            assert run.size == 0 or run[-1] - run[0] + 1 == run.size


def test_intensities_look_like_head_ct() -> None:
    plans = plan_phantom(75, seed=0)
    picked = {}
    for plan in plans:
        for bleed in plan.bleeds:
            picked.setdefault(bleed.subtype, plan)
    assert sorted(picked) == [0, 1, 2, 3, 4]
    for subtype, plan in picked.items():
        hu, mask = render_patient(plan, size=64, seed=0)
        mask = mask.astype(bool)
        labels = plan.labels()
        assert [bool(m.any()) for m in mask] == [label.has_ich for label in labels]
        bleed = hu[mask]
        assert 50 <= bleed.mean() <= 90, SUBTYPES[subtype]
        # Soft tissue next to the bleed (not bone or air) is brain or CSF, far darker.
        ring = ndimage.binary_dilation(mask, np.ones((1, 5, 5), bool)) & ~mask
        near = hu[ring & (hu > -100) & (hu < 200)]
        assert bleed.mean() - np.median(near) > 20, SUBTYPES[subtype]
        clean = [k for k, label in enumerate(labels) if not label.has_ich]
        middle = hu[clean[len(clean) // 2]]
        assert (middle[0, 0], middle[-1, -1]) == pytest.approx((-1000, -1000), abs=30)  # air
        assert 700 <= middle.max() <= 1700  # skull
        tissue = middle[(middle > -100) & (middle < 200)]
        assert 20 <= np.median(tissue) <= 45  # brain


def test_ensure_phantom_is_written_once_by_concurrent_callers(tmp_path: Path) -> None:
    root = tmp_path / "phantom"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=ensure_phantom, args=(root, 2, 32, 1)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    release = PhysioNetRelease.open(root)
    for patient in release.patients:
        release.load_patient(patient)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".phantom.lock", "phantom"]
    written = (root / "ct_scans" / "049.nii").stat().st_mtime_ns
    assert ensure_phantom(root, 2, 32, 1) == root
    assert (root / "ct_scans" / "049.nii").stat().st_mtime_ns == written


def test_ensure_phantom_refuses_a_different_folder(tmp_path: Path) -> None:
    root = ensure_phantom(tmp_path / "ph", patients=1, size=16, seed=0)
    with pytest.raises(IchsegError, match="expected"):
        ensure_phantom(root, patients=1, size=32, seed=0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.txt").write_text("mine")
    with pytest.raises(IchsegError, match="not a phantom"):
        ensure_phantom(tmp_path / "other", patients=1, size=16, seed=0)
    with pytest.raises(IchsegError, match="size"):
        write_phantom(tmp_path / "tiny", patients=1, size=8)


@pytest.mark.parametrize(
    ("given", "line"),
    [
        ({"patients": 0}, "phantom patients must be at least 1, found 0"),
        ({"seed": 2**32}, "phantom seed: expected an integer in 0..4294967295, found 4294967296"),
        ({"layout": "dicom"}, "phantom layout: expected one of physionet, instance22, bhsd, "),
        ({"size": 2049}, "phantom size must be 16..2048 pixels, found 2049"),
        ({"size": 32.0}, "phantom size must be 16..2048 pixels, found 32.0"),
    ],
)
def test_parameters_the_schema_refuses_are_refused_before_writing(
    tmp_path: Path, given: dict, line: str
) -> None:
    params = {"patients": 1, "size": 16, "seed": 0, "layout": "physionet"} | given
    with pytest.raises(IchsegError, match="^" + re.escape(line)):
        ensure_phantom(tmp_path / "ph", **params)
    assert not (tmp_path / "ph").exists()
