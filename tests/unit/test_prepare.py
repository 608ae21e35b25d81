"""prepare/load_prepared on a tiny synthetic release: content, caching, concurrency, errors."""

import csv
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ichseg.atomic import file_lock, try_lock
from ichseg.cli import main
from ichseg.data import prepare as prepare_mod
from ichseg.data.phantom import write_phantom
from ichseg.data.prepare import PrepareConfig, load_prepared, prepare
from ichseg.data.release import LABEL_CSV_COLUMNS, SUBTYPES, PhysioNetRelease
from ichseg.errors import IchsegError

PATIENTS = (49, 50, 51, 52, 53, 54)
N_SLICES = 8
ICH_PATIENTS = (49, 50, 51)
ICH_SLICES = range(3, 7)  # 1-based slice numbers with a bleed
CFG = PrepareConfig(size=32, seed=0, n_folds=3, test_fraction=0.2)


def write_tiny_release(
    root: Path,
    size: int = 64,
    stored_ras: bool = False,
    ich_patients: tuple[int, ...] = ICH_PATIENTS,
    specks: dict[tuple[int, int], tuple[int, ...]] | None = None,
) -> Path:
    """Write a release in the real layout: int16 scans, uint8 masks, the diagnosis CSV; in the
    training orientation (axis 0 towards the left), or with `stored_ras` the same heads stored
    with axis 0 towards the right. `ich_patients` have a block of bleed on `ICH_SLICES`;
    `specks` maps (patient, slice) of other slices to the subtypes (indices) of a bleed of two
    pixels there."""
    specks = specks or {}
    rng = np.random.default_rng(0)
    (root / "ct_scans").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    yy, xx = np.mgrid[:size, :size]
    head = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.35 * size)) ** 2 < 1
    for p in PATIENTS:
        hu = np.where(head, 30.0, -1000.0)[..., None] + rng.normal(0, 25, (size, size, N_SLICES))
        mask = np.zeros((size, size, N_SLICES), dtype=np.uint8)
        for s in range(1, N_SLICES + 1):
            block = p in ich_patients and s in ICH_SLICES
            if block:
                # Off-centre, asymmetric block so a wrong rotation cannot line up by chance.
                r0 = size // 6 + s
                mask[r0 : r0 + size // 4, size // 2 : size // 2 + size // 8 + p % 3, s - 1] = 1
            subtypes = [int(block and i == p % 5) for i in range(5)]
            if (p, s) in specks:
                mask[size // 2, size // 3 : size // 3 + 2, s - 1] = 1
                subtypes = [int(i in specks[p, s]) for i in range(5)]
            bleed = block or (p, s) in specks
            rows.append([p, s, *subtypes, int(not bleed), int(s == 2)])
        hu[mask > 0] = 75.0
        affine = np.diag([-0.45, 0.45, 5.0, 1.0])
        if stored_ras:
            hu, mask = hu[::-1], mask[::-1]
            affine = np.diag([0.45, 0.45, 5.0, 1.0])
            affine[0, 3] = -0.45 * (size - 1)
        nib.save(
            nib.Nifti1Image(np.round(hu).astype(np.int16), affine), root / f"ct_scans/{p:03d}.nii"
        )
        nib.save(nib.Nifti1Image(mask, affine), root / f"masks/{p:03d}.nii")
    with open(root / "hemorrhage_diagnosis_raw_ct.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([LABEL_CSV_COLUMNS, *rows])
    (root / "Read_me.txt").write_text("Synthetic test release, no patient data.\n")
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_tiny_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def cache(release, tmp_path_factory) -> Path:
    return prepare(release, tmp_path_factory.mktemp("cache"), CFG)


def test_the_same_heads_stored_another_way_give_the_same_cache(cache, tmp_path):
    """Prepared slices come from the affine's orientation, not the array's order."""
    flipped = prepare(write_tiny_release(tmp_path / "ras", stored_ras=True), tmp_path / "c", CFG)
    ours, theirs = load_prepared(cache), load_prepared(flipped)
    assert ours.ids == theirs.ids
    np.testing.assert_array_equal(ours.images, theirs.images)
    np.testing.assert_array_equal(ours.masks, theirs.masks)


def test_balanced_set_and_index(release, cache):
    data = load_prepared(cache)
    ich_ids = {f"{p:03d}_{s:02d}" for p in ICH_PATIENTS for s in ICH_SLICES}
    all_ids = {f"{p:03d}_{s:02d}" for p in PATIENTS for s in range(1, N_SLICES + 1)}
    assert data.ids == sorted(data.ids) and len(data.ids) == 2 * len(ich_ids)
    assert {i for i, h in zip(data.ids, data.has_ich, strict=True) if h} == ich_ids
    assert set(data.ids) <= all_ids
    assert data.images.shape == (24, 32, 32) and data.images.dtype == np.uint8
    assert data.masks.dtype == bool and data.masks.shape == data.images.shape
    assert np.array_equal(data.masks.any(axis=(1, 2)), data.has_ich)
    assert list(data.patients) == [int(i[:3]) for i in data.ids]
    assert [int(r.sum()) for r in data.subtypes] == [int(h) for h in data.has_ich]
    with open(cache / "index.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["slice_id"] for r in rows] == data.ids
    assert [int(r["fracture"]) for r in rows] == [int(i[-2:] == "02") for i in data.ids]
    meta = data.meta
    assert meta["source"] == "physionet" and meta["cfg"]["size"] == 32
    assert meta["labels_sha256"] == PhysioNetRelease.open(release).labels_sha256
    assert meta["counts"]["n_ich"] == meta["counts"]["n_clean"] == 12
    split_ids = set(data.splits["test"]) | set(data.splits["folds"][0]["train"])
    assert split_ids | set(data.splits["folds"][0]["val"]) == set(data.ids)


def test_arrays_match_an_independent_computation(release, cache):
    data = load_prepared(cache)
    for sid in ("050_04", data.ids[0]):
        row = data.ids.index(sid)
        p, s = int(sid[:3]), int(sid[4:])
        hu = nib.load(release / f"ct_scans/{p:03d}.nii").get_fdata()[:, :, s - 1]
        windowed = np.ascontiguousarray(np.rot90(np.clip((hu + 20) / 120, 0, 1)), dtype=np.float32)
        # Pillow's antialiased bilinear is the reference torch's antialias=True reproduces.
        small = np.asarray(Image.fromarray(windowed).resize((32, 32), Image.Resampling.BILINEAR))
        diff = np.abs(data.images[row].astype(int) - np.round(small * 255).astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.95
        mask = np.rot90(nib.load(release / f"masks/{p:03d}.nii").get_fdata()[:, :, s - 1] > 0)
        expected = mask.reshape(32, 2, 32, 2).mean(axis=(1, 3)) >= 0.5
        assert np.array_equal(data.masks[row], expected)


def test_second_call_reuses_and_new_size_new_dir(release, cache, monkeypatch):
    stamp = (cache / "meta.json").stat().st_mtime_ns

    def no_reading(self, patient):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(PhysioNetRelease, "load_patient", no_reading)
    assert prepare(release, cache.parent, CFG) == cache
    assert (cache / "meta.json").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    other = prepare(release, cache.parent, dataclasses.replace(CFG, size=16))
    assert other != cache and load_prepared(other).images.shape == (24, 16, 16)
    assert load_prepared(cache).images.shape == (24, 32, 32)


def _worker(release, out, barrier, log_dir):
    original = prepare_mod._build

    def counted(*args):
        (Path(log_dir) / f"build-{os.getpid()}").touch()
        original(*args)

    prepare_mod._build = counted
    barrier.wait()
    path = prepare(release, out, CFG)
    (Path(log_dir) / f"result-{os.getpid()}").write_text(str(path))


def test_concurrent_prepare_builds_one_cache(release, tmp_path):
    ctx = mp.get_context("spawn")  # fork after torch threads have started can deadlock
    barrier = ctx.Barrier(4)
    out, log_dir = tmp_path / "out", tmp_path / "log"
    log_dir.mkdir()
    procs = [ctx.Process(target=_worker, args=(release, out, barrier, log_dir)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0] * 4
    results = {f.read_text() for f in log_dir.glob("result-*")}
    assert len(list(log_dir.glob("result-*"))) == 4 and len(results) == 1
    assert len(list(log_dir.glob("build-*"))) == 1
    visible = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert [str(p) for p in visible] == list(results)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert len(load_prepared(visible[0]).ids) == 24


def test_a_failed_prepare_leaves_no_folder_or_lock_behind(release, tmp_path):
    impossible = dataclasses.replace(CFG, n_folds=500)  # more folds than hemorrhage slices
    nested = tmp_path / "a" / "b" / "cache"
    with pytest.raises(IchsegError, match="n_folds=500"):
        prepare(release, nested, impossible)
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine\n")
    with pytest.raises(IchsegError, match="n_folds=500"):
        prepare(release, kept, impossible)
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    # The lock of the failed build is gone, and a good build still takes one.
    assert prepare(release, kept, CFG).parent == kept


def test_a_lock_deleted_by_its_holder_is_taken_afresh_by_the_next(tmp_path):
    path = tmp_path / "x.lock"
    order = []
    with file_lock(path):
        waiter = threading.Thread(target=lambda: _hold(path, order))
        waiter.start()
        time.sleep(0.3)  # the waiter now blocks on the file this block holds
        path.unlink()
        order.append("released")
    waiter.join(10)
    assert order == ["released", "waiter locked", "waiter released"]


def _hold(path, order):
    with file_lock(path):
        order.append("waiter locked")
        # It holds the file now at `path`, not the deleted one: nobody else gets that.
        assert try_lock(path) is None
        order.append("waiter released")


def test_load_prepared_errors_name_the_file(cache, tmp_path):
    broken = shutil.copytree(cache, tmp_path / "broken")
    (broken / "splits.json").unlink()
    with pytest.raises(IchsegError, match=r"splits\.json"):
        load_prepared(broken)
    shutil.copy(cache / "splits.json", broken / "splits.json")
    np.save(broken / "masks.npy", np.zeros((3, 32, 32), dtype=bool))
    with pytest.raises(IchsegError, match=r"masks\.npy"):
        load_prepared(broken)
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["cache_version"] == prepare_mod.CACHE_VERSION


def test_bad_config_and_unbalanced_release_fail_clearly(release, tmp_path):
    with pytest.raises(IchsegError, match="split"):
        PrepareConfig(split="random")
    with pytest.raises(IchsegError, match="size"):
        PrepareConfig(size=0)
    # Hydra may hand over 40 for 40.0: same config, same cache key.
    as_ints = dataclasses.asdict(PrepareConfig(level=40, width=120, seed=np.int64(0)))
    assert json.dumps(as_ints) == json.dumps(dataclasses.asdict(PrepareConfig()))
    with pytest.raises(IchsegError, match="hemorrhage"):
        prepare(release, tmp_path, PrepareConfig(size=32, n_folds=20))


def test_phantom_patient_split_counts_match_its_csv(tmp_path):
    root = write_phantom(tmp_path / "phantom", patients=20, size=32)
    cfg = PrepareConfig(size=32, split="patient", n_folds=3, test_fraction=0.2)
    data = load_prepared(prepare(root, tmp_path / "cache", cfg))
    labels = PhysioNetRelease.open(root).labels
    ich = [lab for lab in labels if lab.has_ich]
    assert sorted(lab.slice_id for lab in ich) == [
        i for i, h in zip(data.ids, data.has_ich, strict=True) if h
    ]
    counts = data.meta["counts"]
    assert counts["n_ich"] == counts["n_clean"] == len(ich) and data.meta["source"] == "physionet"
    assert data.meta["source_facts"]["synthetic"] is True
    assert counts["subtypes"] == {
        name: sum(lab.subtypes[k] for lab in ich) for k, name in enumerate(SUBTYPES)
    }
    test_patients = {int(i[:3]) for i in data.splits["test"]}
    for fold in data.splits["folds"]:
        assert not test_patients & {int(i[:3]) for i in fold["train"] + fold["val"]}


@pytest.mark.reliability(
    case="release volume whose last axis is not axial",
    did="one patient's scan and mask re-saved with an affine whose axial axis is the second",
    entry="ichseg prepare",
)
def test_a_release_volume_whose_last_axis_is_not_axial_is_refused(
    tmp_path, capsys, record_behaviour
):
    """The CSV numbers the last axis: slicing a coronal last axis would label the wrong slices."""
    root = write_tiny_release(tmp_path / "release")
    patient = PATIENTS[0]
    for folder in ("ct_scans", "masks"):
        path = root / folder / f"{patient:03d}.nii"
        image = nib.load(path)
        # A copy: the loaded array maps the file that is about to be replaced.
        data = np.asanyarray(image.dataobj).copy()
        nib.save(nib.Nifti1Image(data, image.affine[:, [0, 2, 1, 3]]), path)
    out = tmp_path / "cache"
    argv = ["prepare", root, out, "--size", "32", "--n-folds", "3", "--test-fraction", "0.2"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    # OUT did not exist: the failed build removes the folder it created, lock and all.
    assert not out.exists()
    assert err.startswith(
        f"ichseg prepare: error: ct_scans/{patient:03d}.nii: the affine makes array axis 1 the "
        "axial one, but hemorrhage_diagnosis_raw_ct.csv numbers the slices of the last axis"
    ), err
    record_behaviour(f"exit 2, nothing left in OUT: {err}")
