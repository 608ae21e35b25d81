"""Reliability: bad input stops with one line and leaves nothing behind, faults lose nothing,
the same seed gives the same results. These tests write the rows of docs/reliability.md
(`pytest -m reliability --reliability-table docs/reliability.md`).

Covered elsewhere, and marked there: every bad CSV cell and volume at the reader level
(tests/unit/test_release.py), fold and model overrides (tests/system/test_sweep_args.py), a
sweep folder of another configuration and SIGKILL-and-resume (tests/system/test_train_sweep.py).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import ctypes
import dataclasses
import errno
import io
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from ichseg import cli
from ichseg.data import prepare as prepare_mod
from ichseg.data.prepare import PrepareConfig, load_prepared, prepare
from ichseg.data.release import CSV_NAME, SUBTYPES
from ichseg.errors import IchsegError
from ichseg.jobs.records import read_job, read_records, upsert_record, write_job
from ichseg.models.unet import unet_config
from tests.helpers.runs import LAST, ROOT, finish, launch

# Torch and Lightning are imported inside the tests that need them: the twenty `prepare`
# processes import this module too.
PATIENT = 51  # a phantom patient with hemorrhage slices: the one each case damages
CFG = PrepareConfig(size=32)  # what `ichseg prepare REL OUT --size 32` builds


def prepare_fails(release: Path, out: Path, capsys) -> str:
    """Run `ichseg prepare`; check exit 2, one stderr line, and nothing left: no cache, temp
    dir or lock, and no OUT folder where there was none."""
    existed = out.exists()
    code = cli.main(["prepare", str(release), str(out), "--size", "32"])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("ichseg prepare: error: ") and captured.out == ""
    assert out.exists() == existed
    left = sorted(p.name for p in out.iterdir()) if existed else []
    assert left == [], left
    return lines[0]


# --- Bad release folders through `ichseg prepare` ---------------------------------------------


def _scan(root: Path) -> Path:
    return root / "ct_scans" / f"{PATIENT:03d}.nii"


def _mask(root: Path) -> Path:
    return root / "masks" / f"{PATIENT:03d}.nii"


def _resave(path: Path, data: np.ndarray) -> None:
    """Overwrite a volume with `data`, keeping its affine."""
    affine = nib.load(path).affine.copy()
    nib.save(nib.Nifti1Image(data, affine), path)


def _depth(root: Path) -> int:
    return nib.load(_scan(root)).shape[2]


def _edit_csv(root: Path, change) -> None:
    """Apply `change(header, rows)` to the diagnosis CSV (rows as lists of strings)."""
    with open(root / CSV_NAME, newline="") as fh:
        header, *rows = list(csv.reader(fh))
    header, rows = change(header, rows)
    with open(root / CSV_NAME, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])


def _of_patient(rows: list[list[str]]) -> list[list[str]]:
    return [row for row in rows if int(row[0]) == PATIENT]


def _drop_column(header, rows):
    keep = [i for i, name in enumerate(header) if name != "Epidural"]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in rows]


def _drop_patient(header, rows):
    return header, [row for row in rows if int(row[0]) != PATIENT]


def _duplicate_row(header, rows):
    return header, [*rows, _of_patient(rows)[3]]


def _drop_last_slice(header, rows):
    last = _of_patient(rows)[-1]
    return header, [row for row in rows if row is not last]


def _clear_first_bleed(header, rows):
    """Mark the patient's first hemorrhage slice clean in the CSV; its mask still has a bleed."""
    bleed = next(row for row in _of_patient(rows) if row[header.index("No_Hemorrhage")] == "0")
    for name in SUBTYPES:
        bleed[header.index(name)] = "0"
    bleed[header.index("No_Hemorrhage")] = "1"
    return header, rows


def _bad_voxel(value: float):
    def damage(root: Path) -> None:
        hu = nib.load(_scan(root)).get_fdata(dtype=np.float32)
        hu[5, 7, 2] = value
        _resave(_scan(root), hu)

    return damage


def _truncate(root: Path) -> None:
    data = _scan(root).read_bytes()
    _scan(root).write_bytes(data[: len(data) // 2])


def _empty(root: Path) -> None:
    shutil.rmtree(root)
    root.mkdir()


# case -> (damage, what the test did, fragments the message must hold)
BAD_RELEASES = {
    "truncated NIfTI": (
        _truncate,
        "cut ct_scans/051.nii to half its bytes",
        ["ct_scans/051.nii", "cannot read as NIfTI"],
    ),
    "2D volume": (
        lambda root: _resave(_scan(root), np.zeros((32, 32), np.int16)),
        "ct_scans/051.nii replaced by a 32 x 32 image",
        ["ct_scans/051.nii", "expected a 3-D volume", "(32, 32)"],
    ),
    "4D volume": (
        lambda root: _resave(_scan(root), np.zeros((32, 32, _depth(root), 2), np.int16)),
        "ct_scans/051.nii replaced by a (32, 32, N, 2) volume",
        ["ct_scans/051.nii", "expected a 3-D volume", ", 2)"],
    ),
    "scan and mask of different shapes": (
        lambda root: _resave(_mask(root), np.zeros((32, 30, _depth(root)), np.uint8)),
        "masks/051.nii rewritten 32 x 30",
        ["masks/051.nii", "differs from ct_scans/051.nii"],
    ),
    "CSV with a missing column": (
        lambda root: _edit_csv(root, _drop_column),
        "column Epidural deleted from the CSV",
        [CSV_NAME, "missing column(s) Epidural"],
    ),
    "CSV with a missing patient": (
        lambda root: _edit_csv(root, _drop_patient),
        "rows of patient 51 deleted from the CSV, its scan and mask kept",
        ["no rows for patient 51", "ct_scans/051.nii"],
    ),
    "patient of the CSV without a scan": (
        lambda root: _scan(root).unlink(),
        "ct_scans/051.nii deleted, its CSV rows kept",
        ["patient 51", "has no scan", "ct_scans/051.nii"],
    ),
    "CSV with duplicated rows": (
        lambda root: _edit_csv(root, _duplicate_row),
        "a row of patient 51 appended again",
        [CSV_NAME, "duplicate row for patient 51 slice 4"],
    ),
    "CSV slice count disagrees with the volume": (
        lambda root: _edit_csv(root, _drop_last_slice),
        "the last slice row of patient 51 deleted",
        ["ct_scans/051.nii", "slices for patient 51, the volume has"],
    ),
    "mask disagrees with the CSV": (
        lambda root: _edit_csv(root, _clear_first_bleed),
        "first bleeding slice of patient 51 marked No_Hemorrhage=1 in the CSV",
        ["masks/051.nii", "mask voxels", "No_Hemorrhage=1", "patient 51"],
    ),
    "NaN voxels": (
        _bad_voxel(np.nan),
        "one voxel of ct_scans/051.nii set to NaN",
        ["ct_scans/051.nii", "1 voxels are NaN or infinite"],
    ),
    "inf voxels": (
        _bad_voxel(np.inf),
        "one voxel of ct_scans/051.nii set to +inf",
        ["ct_scans/051.nii", "1 voxels are NaN or infinite"],
    ),
    "empty release folder": (_empty, "release folder emptied", ["is empty", "ct_scans/"]),
    "non-existent release folder": (shutil.rmtree, "release folder deleted", ["does not exist"]),
}


@pytest.mark.reliability(entry="ichseg prepare")
@pytest.mark.parametrize("case", BAD_RELEASES, ids=lambda case: case.replace(" ", "-"))
def test_bad_release_stops_prepare_with_one_line(case, release, tmp_path, capsys, record_behaviour):
    damage, did, fragments = BAD_RELEASES[case]
    root = shutil.copytree(release, tmp_path / "release")
    damage(root)
    message = prepare_fails(root, tmp_path / "cache", capsys)
    for fragment in fragments:
        assert fragment in message
    record_behaviour(f"exit 2, nothing left in OUT: {message}", case=case, did=did)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapSets(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


# capget(2)/capset(2): version 3 takes two _CapSets (capabilities 0-31, then 32-63).
_CAP_VERSION_3 = 0x20080522
# CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: what lets root read and list what chmod 000 closes.
_PERMISSION_OVERRIDES = (1 << 1) | (1 << 2)


@contextlib.contextmanager
def _without_permission_overrides():
    """Run the block as root without the capabilities that bypass file permissions (this
    thread's effective set only; they come back after)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, sets = _CapHeader(_CAP_VERSION_3, 0), (_CapSets * 2)()
    if libc.capget(ctypes.byref(header), sets) != 0:
        pytest.skip(f"capget failed ({os.strerror(ctypes.get_errno())}): cannot stop root's reads")
    effective = sets[0].effective
    sets[0].effective = effective & ~_PERMISSION_OVERRIDES
    if libc.capset(ctypes.byref(header), sets) != 0:
        pytest.skip(f"capset failed ({os.strerror(ctypes.get_errno())}): cannot stop root's reads")
    try:
        yield
    finally:
        sets[0].effective = effective
        assert libc.capset(ctypes.byref(header), sets) == 0, "could not restore capabilities"


@contextlib.contextmanager
def unprivileged():
    """Run the block so that chmod 000 stops it, while it still reaches the checkout's code and
    conf/ wherever the checkout lives: as the tests' own user; when that is root, as the
    checkout's owner (root without the capabilities that bypass file permissions, or
    seteuid to the user who owns the checkout)."""
    if os.geteuid() != 0:
        yield ""
        return
    owner = ROOT.stat().st_uid
    if owner == 0:
        with _without_permission_overrides():
            yield (
                " (as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, the capabilities "
                "that let root past chmod 000)"
            )
        return
    # The interpreter may live under /root, out of the owner's reach: load lazy codecs now.
    codecs.lookup("utf-8-sig")
    try:
        os.seteuid(owner)
    except PermissionError:
        pytest.skip("running as root without CAP_SETUID: chmod 000 cannot stop root's reads")
    try:
        yield f" (as uid {owner}, the checkout's owner: chmod 000 does not stop root)"
    finally:
        os.seteuid(0)


UNREADABLE = {
    "scan": (_scan, ["ct_scans/051.nii", "cannot read the file (Permission denied)"]),
    "csv": (lambda root: root / CSV_NAME, [CSV_NAME, "cannot read the file (Permission denied)"]),
    "folder": (lambda root: root, ["cannot list the folder (Permission denied)"]),
}


@pytest.mark.reliability(case="unreadable file", entry="ichseg prepare")
@pytest.mark.parametrize("which", UNREADABLE)
def test_unreadable_file_stops_prepare_with_one_line(which, release, capsys, record_behaviour):
    pick, fragments = UNREADABLE[which]
    # Not under pytest's tmp folder, which only root may enter.
    work = Path(tempfile.mkdtemp(prefix="ichseg-unreadable-"))
    root, out = work / "release", work / "cache"
    target = pick(root)
    try:
        shutil.copytree(release, root)
        for folder in (work, root, root / "ct_scans", root / "masks"):
            folder.chmod(0o755)
        out.mkdir()
        out.chmod(0o777)
        target.chmod(0)
        with unprivileged() as who:
            message = prepare_fails(root, out, capsys)
        for fragment in fragments:
            assert fragment in message
        did = f"chmod 000 {target.relative_to(work)}{who}"
        record_behaviour(
            f"exit 2, nothing left in OUT: {message.replace(str(work), '<tmp>')}", did=did
        )
    finally:
        if target.exists():
            target.chmod(0o755)
        shutil.rmtree(work)


# --- Disk full --------------------------------------------------------------------------------


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.reliability(case="disk full while writing the cache", entry="ichseg prepare")
def test_disk_full_while_building_the_cache(
    release, tmp_path, capsys, monkeypatch, record_behaviour
):
    real_save = np.save

    def half_then_full(file, array, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(buffer, array, *args, **kwargs)
        Path(file).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise _enospc(file)

    monkeypatch.setattr(prepare_mod.np, "save", half_then_full)
    out = tmp_path / "cache"
    message = prepare_fails(release, out, capsys)
    assert "no space left on device" in message and "nothing was written" in message
    monkeypatch.undo()
    assert cli.main(["prepare", str(release), str(out), "--size", "32"]) == 0
    caches = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(caches) == 1 and message.startswith(f"ichseg prepare: error: {caches[0]}: ")
    assert len(load_prepared(caches[0]).ids) == load_prepared(caches[0]).images.shape[0] > 0
    record_behaviour(
        f"exit 2, no cache or temp dir left: {message}; the next run builds the cache",
        did="np.save writes half of images.npy, then raises ENOSPC",
    )


def _tiny_trainer(root: Path):
    """A Trainer that has taken one step on a 2-level network (enough to save checkpoints)."""
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from ichseg.training.module import SegmentationModule

    torch.manual_seed(0)
    batch = {"image": torch.rand(2, 1, 16, 16), "mask": (torch.rand(2, 1, 16, 16) > 0.5).float()}
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
    )
    module = SegmentationModule(net=unet_config((2, 4)), channels_last=False)
    trainer.fit(module, DataLoader([batch], batch_size=None))
    return trainer


@pytest.mark.reliability(
    case="disk full while writing a checkpoint", entry="save_checkpoint_atomically (train.py)"
)
def test_disk_full_while_saving_a_checkpoint_keeps_the_last_good_one(
    tmp_path, monkeypatch, record_behaviour
):
    import torch

    from ichseg.training.callbacks import save_checkpoint_atomically

    trainer = _tiny_trainer(tmp_path)
    last = tmp_path / LAST
    save_checkpoint_atomically(trainer, last)
    good = last.read_bytes()
    real_save = trainer.save_checkpoint

    def half_then_full(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise _enospc(path)

    monkeypatch.setattr(trainer, "save_checkpoint", half_then_full)
    with pytest.raises(IchsegError) as info:
        save_checkpoint_atomically(trainer, last)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{last}: cannot write it, no space left")
    assert "the previous last.ckpt is kept" in message
    assert last.read_bytes() == good
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 1
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]
    record_behaviour(
        f"IchsegError: {message}; the old last.ckpt is byte-identical and loads",
        did="the checkpoint write stops half-way with ENOSPC over a good last.ckpt",
    )


def _record(epoch: int) -> dict:
    metrics = {"dice_paper": epoch / 1000, "loss": 1 - epoch / 1000}
    return {"model": "dunet", "fold": 0, "epoch": epoch, "train": metrics, "val": metrics}


@pytest.mark.reliability(case="disk full while writing records", entry="upsert_record (train.py)")
def test_disk_full_while_writing_records_keeps_the_previous_file(
    tmp_path, monkeypatch, record_behaviour
):
    from ichseg import atomic

    job = tmp_path / "dunet-fold0"
    for epoch in (1, 2):
        upsert_record(job, _record(epoch))
    before = (job / "records.jsonl").read_bytes()

    def full(fd):
        raise _enospc(job / "records.jsonl")

    # Delayed allocation reports a full disk at fsync, after write() seemed to succeed.
    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(IchsegError) as info:
        upsert_record(job, _record(3))
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(job / "records.jsonl"))
    assert "the previous records.jsonl is kept" in message
    assert (job / "records.jsonl").read_bytes() == before
    assert [p.name for p in job.iterdir()] == ["records.jsonl"]
    record_behaviour(
        f"IchsegError: {message}; records.jsonl unchanged, no temp file",
        did="os.fsync raises ENOSPC while records.jsonl is rewritten",
    )


@pytest.mark.reliability(
    case="report reads records while a job writes them", entry="report: collect.read_job_dir"
)
def test_report_never_reads_a_half_written_record(tmp_path, record_behaviour):
    from ichseg.sweeps.local import read_job_dir

    job = tmp_path / "dunet-fold0"
    job.mkdir()
    done = threading.Event()

    def writer() -> None:
        try:
            for epoch in range(1, 151):
                upsert_record(job, _record(epoch))
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = [0]
    while not done.is_set():
        epochs = [r["epoch"] for r in read_job_dir(job).records]
        # Complete rows 1..k, and never fewer than before (a truncate-and-write would be).
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= seen[-1]
        seen.append(len(epochs))
    thread.join()
    assert len(set(seen)) >= 5, "the reader did not overlap the writer"
    assert len(read_job_dir(job).records) == 150
    record_behaviour(
        "every read during 150 rewrites saw complete records 1..k, k never going back",
        did="one thread rewrites records.jsonl 150 times while the report's reader polls it",
    )


@pytest.mark.reliability(
    case="unreadable last.ckpt at resume",
    did="last.ckpt overwritten with 100 bytes of zeros",
    entry="train.py resume check",
)
def test_unreadable_checkpoint_at_resume_is_one_line(tmp_path, record_behaviour):
    from omegaconf import OmegaConf

    from ichseg.jobs.config import check_resume_checkpoint

    last = tmp_path / LAST
    last.parent.mkdir()
    last.write_bytes(bytes(100))
    with pytest.raises(IchsegError) as info:
        check_resume_checkpoint(last, OmegaConf.create({"filters": [4, 8]}))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{last}: cannot read the checkpoint")
    assert last.read_bytes() == bytes(100)
    record_behaviour(f"IchsegError, the file is left alone: {message}")


# --- Concurrency ------------------------------------------------------------------------------


def _prepare_worker(release: Path, out: Path, barrier, log_dir: Path) -> None:
    """One of many processes preparing the same cache; logs each build it runs."""
    original = prepare_mod._build

    def counted(*args) -> None:
        (log_dir / f"build-{os.getpid()}").touch()
        original(*args)

    prepare_mod._build = counted
    barrier.wait()
    (log_dir / f"result-{os.getpid()}").write_text(str(prepare(release, out, CFG)))


@pytest.mark.reliability(case="twenty processes prepare one cache", entry="prepare()")
def test_twenty_processes_prepare_one_valid_cache(release, tmp_path, record_behaviour):
    ctx = mp.get_context("forkserver")
    # Children fork from a server that imported torch once: no 20 fresh imports (2 cores).
    ctx.set_forkserver_preload(["ichseg.data.prepare"])
    barrier = ctx.Barrier(20)
    out, log_dir = tmp_path / "cache", tmp_path / "log"
    log_dir.mkdir()
    procs = [
        ctx.Process(target=_prepare_worker, args=(release, out, barrier, log_dir))
        for _ in range(20)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0] * 20
    results = {path.read_text() for path in log_dir.glob("result-*")}
    builds = list(log_dir.glob("build-*"))
    assert len(list(log_dir.glob("result-*"))) == 20 and len(results) == 1 and len(builds) == 1
    visible = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert [str(p) for p in visible] == list(results)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    data = load_prepared(visible[0])
    assert data.images.shape[0] == len(data.ids) == data.meta["counts"]["n_slices"]
    record_behaviour(
        "20 processes exit 0 with the same path; 1 build, 1 cache folder, no temp folder; "
        "load_prepared validates it",
        did="20 processes released together by a barrier call prepare() on one release",
    )


# --- Report -----------------------------------------------------------------------------------


@pytest.mark.reliability(case="report over a sweep with no finished job", entry="ichseg report")
def test_report_of_a_sweep_without_a_finished_job(tmp_path, capsys, record_behaviour):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    task = {"hydra": {"overrides": {"task": ["model=unet,dunet", "fold=0"]}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(task))
    for model, status in (("unet", "running"), ("dunet", "preempted")):
        write_job(sweep / f"{model}-fold0", {"model": model, "fold": 0, "status": status})
    code = cli.main(["report", str(sweep), "--no-test"])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert str(sweep) in lines[0] and "nothing to report" in lines[0]
    assert sorted(p.name for p in sweep.iterdir()) == ["dunet-fold0", "multirun.yaml", "unet-fold0"]
    record_behaviour(
        f"exit 2, no report folder: {lines[0]}",
        did="two jobs, one running and one pre-empted, neither with a record",
    )


# --- Reproducibility: splits --------------------------------------------------------------------


@pytest.mark.reliability(case="same seed: identical splits", entry="prepare()")
def test_same_seed_gives_identical_caches_and_another_seed_other_splits(
    release, tmp_path, record_behaviour
):
    first, second = (prepare(release, tmp_path / name, CFG) for name in ("a", "b"))
    for name in ("splits.json", "index.csv", "images.npy", "masks.npy"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other = load_prepared(prepare(release, tmp_path / "c", dataclasses.replace(CFG, seed=1)))
    splits = load_prepared(first).splits
    assert splits["test"] != other.splits["test"]
    assert [f["val"] for f in splits["folds"]] != [f["val"] for f in other.splits["folds"]]
    record_behaviour(
        "seed 0 twice: splits.json, index.csv, images.npy, masks.npy byte-identical; "
        "seed 1: another test set and other folds",
        did="prepare() into two folders with seed 0, once with seed 1",
    )


# --- Training subprocesses ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory) -> Path:
    """Two identical deterministic runs (seed 0, dunet, fold 1, 2 epochs), side by side."""
    root = tmp_path_factory.mktemp("train")
    sweeps = [root / "experiments" / name for name in ("a", "b")]
    procs = [launch(root, sweep) for sweep in sweeps]
    for proc, sweep in zip(procs, sweeps, strict=True):
        code, err = finish(proc, sweep)
        assert code == 0, err[-3000:]
    return root


def job_of(root: Path, sweep: str, model: str = "dunet") -> Path:
    return root / "experiments" / sweep / f"{model}-fold1"


@pytest.mark.slow
@pytest.mark.reliability(case="same seed and config: identical records", entry="train.py -m")
def test_same_seed_and_config_give_byte_identical_records(twin_runs, record_behaviour):
    a, b = job_of(twin_runs, "a"), job_of(twin_runs, "b")
    for name in ("records.jsonl", "history.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    records = read_records(a)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0]["train"]["loss"] != records[1]["train"]["loss"]  # it trained
    assert read_job(a)["config_hash"] == read_job(b)["config_hash"]
    assert read_job(a)["cache_dir"] == read_job(b)["cache_dir"]
    record_behaviour(
        "records.jsonl and history.csv byte-identical (2 epochs, every metric)",
        did="two processes, same seed and config, deterministic=true, CPU, 1 thread each",
    )


@pytest.mark.slow
@pytest.mark.reliability(
    case="every job records seed, config, code and package versions", entry="train.py -m"
)
def test_every_job_records_its_provenance(twin_runs, record_behaviour):
    job = job_of(twin_runs, "a")
    state = read_job(job)
    config = yaml.safe_load((job / "config.yaml").read_text())
    assert state["seed"] == config["seed"] == 0 and state["fold"] == config["fold"] == 1
    assert config["model"]["name"] == state["model"] == "dunet" and config["deterministic"]
    commit = state["code_version"].removesuffix("-dirty").rsplit("-g", 1)[-1]
    kind = subprocess.run(
        ["git", "cat-file", "-t", commit], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert kind.stdout.strip() == "commit", state["code_version"]
    for name in ("torch", "pytorch-lightning", "hydra-core", "numpy", "monai"):
        assert state["packages"][name] == metadata.version(name)
    assert state["hardware"]["cpu_count"] == os.cpu_count()
    keys = ", ".join(sorted(state))
    record_behaviour(
        f"job.json keys: {keys}; code_version is `git describe --dirty` of the checkout; "
        "config.yaml holds the whole resolved config",
        did="read job.json and config.yaml of a finished job",
    )


@pytest.mark.slow
@pytest.mark.reliability(case="SIGTERM (pre-emption)", entry="train.py -m, then re-run")
def test_sigterm_saves_a_checkpoint_and_a_rerun_finishes(twin_runs, record_behaviour):
    import torch

    sweep = twin_runs / "experiments" / "term"
    job = sweep / "dunet-fold1"
    # Batches of 1: an epoch is ~100 steps, so the signal lands inside epoch 2.
    proc = launch(twin_runs, sweep, "data.batch_size=1")
    first, last = job / "checkpoints" / "epoch=0001.ckpt", job / LAST
    deadline = time.monotonic() + 300
    while not (first.exists() and last.exists()) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.25)  # past the end of epoch 1, where Lightning also checks for SIGTERM
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc, sweep)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    stop = [line for line in err.splitlines() if "stopped by SIGTERM" in line]
    state = read_job(job)
    assert state["status"] == "preempted" and len(stop) == 1

    def step(path: Path) -> int:
        return torch.load(path, map_location="cpu", weights_only=False)["global_step"]

    per_epoch = step(first)
    assert per_epoch < step(last) < 2 * per_epoch, "last.ckpt was not saved mid-epoch 2"
    assert state["stopped_at_step"] == step(last)
    epoch_one = (job / "records.jsonl").read_text()
    assert [r["epoch"] for r in read_records(job)] == [1]

    code, err = finish(launch(twin_runs, sweep, "data.batch_size=1"), sweep)
    assert code == 0, err[-3000:]
    assert "resuming from a checkpoint that ended before the epoch ended" in err
    state = read_job(job)
    assert state["status"] == "done" and state["resumed_from"].endswith("last.ckpt")
    assert [r["epoch"] for r in read_records(job)] == [1, 2]
    assert (job / "records.jsonl").read_text().startswith(epoch_one)
    line = re.sub(r"step \d+", "step N", stop[0])
    record_behaviour(
        f"exit {128 + signal.SIGTERM}, job.json status preempted, last.ckpt saved mid-epoch 2; "
        f"stderr: {line}; the re-run resumes from it and writes epochs 1-2 once each. Not "
        "claimed: equal records to an uninterrupted run (Lightning restarts a mid-epoch "
        "checkpoint's loader, and the train metrics of epoch 2 cover only the batches after "
        "the resume)",
        did="SIGTERM early in epoch 2 (batch size 1), then the same command",
    )


@pytest.mark.slow
@pytest.mark.reliability(entry="train.py -m into a folder holding a checkpoint")
def test_resume_from_a_checkpoint_of_another_model_is_refused(twin_runs, record_behaviour):
    source = job_of(twin_runs, "a") / LAST
    cases = {
        "checkpoint of the other architecture": (
            "unet",
            [],
            "the D-Unet job's last.ckpt copied into unet-fold1/ (no job.json), model=unet",
            ["filters [4, 8, 16, 32, 64] != [8, 16, 32, 64, 128]", "batch_norm both != second"],
        ),
        "checkpoint from an older config": (
            "dunet",
            ["model.width=0.25"],
            "last.ckpt of model.width=0.125 left in the folder (no job.json), model.width=0.25",
            ["filters [4, 8, 16, 32, 64] != [8, 16, 32, 64, 128]"],
        ),
    }
    runs = {}
    for n, (case, (model, extra, _, _)) in enumerate(cases.items()):
        sweep = twin_runs / "experiments" / f"mismatch{n}"
        target = sweep / f"{model}-fold1" / LAST
        target.parent.mkdir(parents=True)
        shutil.copy(source, target)
        runs[case] = (launch(twin_runs, sweep, *extra, model=model), sweep, target)
    for case, (proc, sweep, target) in runs.items():
        code, err = finish(proc, sweep)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err[-3000:]
        assert lines[0].startswith(f"train.py: error: {target}: saved by another model config")
        for fragment in cases[case][3]:
            assert fragment in lines[0]
        job = target.parents[1]
        assert not [n for n in ("config.yaml", "job.json", "records.jsonl") if (job / n).exists()]
        assert target.read_bytes() == source.read_bytes()
        record_behaviour(
            f"exit 2, nothing written to the job folder: {lines[0]}", case=case, did=cases[case][2]
        )
