"""No plausible-looking wrong answer: one writer per job folder, volumes checked to be CT in
Hounsfield units and large enough to be a scan, refused runs that leave nothing behind."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import yaml

from ichseg.jobs.records import read_job, read_records
from ichseg.sweeps.wandb_offline import RUN_FILES, read_offline_run
from tests.helpers.runs import TINY, finish, launch, train

# Long enough for a second process to start while the first trains (about 10 s).
LONG = ("trainer.max_epochs=50", "checkpoint_every=10")


def _wait_for_status(job: Path, status: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_job(job) if (job / "job.json").exists() else None
        if state is not None and state.get("status") == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"{job}: never reached status {status}")


def _one_run_only(job: Path) -> None:
    """Config, job state, records, history and checkpoints of `job` all come from one run."""
    state = read_job(job)
    config = yaml.safe_load((job / "config.yaml").read_text())
    lr = config["model"]["module"]["lr"]
    epochs, every = config["trainer"]["max_epochs"], config["checkpoint_every"]
    assert state["status"] == "done"
    with open(job / "history.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == list(range(1, epochs + 1))
    recorded = list(range(every, epochs + 1, every))
    assert [r["epoch"] for r in read_records(job)] == recorded
    ckpts = sorted(p.name for p in (job / "checkpoints").glob("epoch=*.ckpt"))
    assert ckpts == [f"epoch={e:04d}.ckpt" for e in recorded]
    import torch

    for ckpt in (job / "checkpoints").glob("*.ckpt"):
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
        assert saved["lr"] == lr, (ckpt, saved["lr"], lr)


@pytest.mark.reliability(
    case="two sweeps train one job folder at once", entry="train.py -m (two processes)"
)
def test_a_job_folder_has_one_writer(tmp_path, record_behaviour):
    sweep = tmp_path / "sweep"
    job = sweep / "dunet-fold1"
    first = launch(tmp_path, sweep, *LONG)
    _wait_for_status(job, "running")
    second = train([*TINY, "model=dunet", f"hydra.sweep.dir={sweep}", *LONG], tmp_path)
    code, err = second.returncode, second.stderr
    assert first.poll() is None, "the first sweep ended before the second tried its job"
    lines = [line for line in err.splitlines() if "dunet-fold1" in line]
    assert code == 0 and len(lines) == 1, err
    assert "skipped" in lines[0] and "another process" in lines[0] and "job.lock" in lines[0]
    assert finish(first, sweep)[0] == 0
    _one_run_only(job)
    record_behaviour(f"same settings, second started while the first trains: exit 0, {lines[0]}")

    # Different settings, both started at once: exactly one trains, the other one refuses.
    other = tmp_path / "race"
    a = launch(tmp_path, other, "trainer.max_epochs=3")
    b = train(
        [
            *TINY,
            "model=dunet",
            f"hydra.sweep.dir={other}",
            "trainer.max_epochs=3",
            "model.module.lr=0.01",
        ],
        tmp_path,
    )
    code_a, err_a = finish(a, other)
    assert 0 in (code_a, b.returncode), (err_a, b.stderr)
    refusal = [
        line
        for line in (err_a + b.stderr).splitlines()
        if any(f"another {what}" in line for what in ("process", "configuration", "command"))
    ]
    assert len(refusal) == 1, (err_a, b.stderr)
    _one_run_only(other / "dunet-fold1")
    record_behaviour(
        f"different settings started together: one trains, the other says: {refusal[0]}",
        did="two train.py -m with different model.module.lr into one new folder",
    )


@pytest.mark.reliability(
    case="single run into a folder another process trains", entry="train.py hydra.run.dir=..."
)
def test_a_single_run_into_a_busy_folder_is_refused(tmp_path, record_behaviour):
    sweep = tmp_path / "sweep"
    job = sweep / "dunet-fold1"
    first = launch(tmp_path, sweep, *LONG)
    _wait_for_status(job, "running")
    args = [a for a in TINY if a != "-m"]
    done = train([*args, "model=dunet", f"hydra.run.dir={job}", *LONG], tmp_path)
    assert first.poll() is None, "the sweep ended before the single run tried its folder"
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "another process" in line and "job.lock" in line, done.stderr
    assert finish(first, sweep)[0] == 0
    _one_run_only(job)
    assert json.loads((job / "job.json").read_text())["status"] == "done"
    record_behaviour(f"exit 2, the folder's run goes on untouched: {line}")


@pytest.mark.reliability(entry="train.py -m")
@pytest.mark.parametrize(
    ("case", "where"),
    [("sweep dir is a file", "a-file"), ("sweep dir under a file", "a-file/sub")],
    ids=["file", "under-file"],
)
def test_unusable_sweep_dir_is_one_line(tmp_path, case, where, record_behaviour):
    (tmp_path / "a-file").write_text("keep me\n")
    done = train([*TINY, "model=dunet", f"hydra.sweep.dir={tmp_path / where}"], tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("train.py: error: hydra.sweep.dir") and where in lines[0]
    assert (tmp_path / "a-file").read_text() == "keep me\n"
    record_behaviour(f"exit 2: {lines[0]}", case=case)


@pytest.mark.reliability(entry="train.py -m")
@pytest.mark.parametrize(
    ("case", "overrides", "jobs"),
    [
        ("a model given twice", ["model=unet,unet"], ("model=unet", "model=unet")),
        ("a swept seed", ["model=dunet", "seed=1,2"], ("seed=1", "seed=2")),
    ],
    ids=["model-twice", "seed-swept"],
)
def test_two_jobs_of_one_sweep_never_share_a_folder(
    tmp_path, case, overrides, jobs, record_behaviour
):
    """The second would find the first's results and skip, or resume them as its own."""
    sweep = tmp_path / "sweep"
    done = train([*TINY, *overrides, f"hydra.sweep.dir={sweep}"], tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    folder = sweep / f"{overrides[0].split('=')[1].split(',')[0]}-fold1"
    assert lines[0].startswith("train.py: error: two jobs of this sweep ("), lines[0]
    assert f") would both write {folder}; nothing was changed" in lines[0], lines[0]
    assert all(job in lines[0] for job in jobs), lines[0]
    assert not sweep.exists()
    record_behaviour(f"exit 2, no folder made: {lines[0]}", case=case)


@pytest.mark.reliability(case="refused single run leaves nothing", entry="train.py")
@pytest.mark.parametrize(
    "override",
    ["checkpoint_every=0", "data=physionet", "data=physionet data.source.root=/nonexistent"],
    ids=["bad-value", "missing-value", "missing-release"],
)
def test_refused_single_run_leaves_nothing(tmp_path, override, record_behaviour):
    args = [a for a in TINY if a != "-m"]
    done = train([*args, *override.split()], tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert not (tmp_path / "experiments" / "runs").exists(), list(tmp_path.rglob("*"))
    record_behaviour(f"{override}: exit 2, no folder under experiments/runs/: {lines[0]}")


# Overrides of keys renamed since the first release, unknown keys and groups: one line, exit 2.
KEY_ERRORS = {
    "data.root=/r": "data.root was renamed data.source.root",
    "data.phantom.patients=4": "data.phantom.patients was renamed phantom.patients",
    "data.phantom.size=64": "data.phantom.size was renamed phantom.size",
    "data.phantom.seed=1": "data.phantom.seed was renamed phantom.seed",
    "data.phantom.root=/r": "data.phantom.root was renamed data.source.root",
    "data.source=physionet": "the data source is a config group now; write data=<source>",
    "+checkpoint_evry=5": "checkpoint_evry is not a key of the config (closest: checkpoint_every",
    "checkpoint_evry=5": "checkpoint_evry is not a key of the config (closest: checkpoint_every",
    "model.module.lrr=0.1": "model.module.lrr is not a key of the config (closest: model.module.lr",
    "+trainer.max_epoch=3": "trainer.max_epoch is not a key of the config (closest: trainer.max_ep",
    "data=foo": "Could not find 'data/foo' Available options in 'data': bhsd instance22",
}


@pytest.mark.reliability(entry="train.py -m")
@pytest.mark.parametrize("override", KEY_ERRORS)
def test_key_errors_are_one_line_with_exit_2(tmp_path, override, record_behaviour):
    done = train([*TINY, override, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("train.py: error: ") and KEY_ERRORS[override] in lines[0], lines
    assert not (tmp_path / "sweep").exists()
    case = "renamed key" if "renamed" in lines[0] or "group now" in lines[0] else "unknown key"
    record_behaviour(f"exit 2, nothing written: {lines[0]}", case=case, did=override)


def test_keys_that_exist_or_that_the_target_takes_pass():
    from ichseg.launch.overrides import check_overrides

    conf = Path(__file__).resolve().parents[2] / "conf"
    check_overrides(
        [
            *("+trainer.fast_dev_run=true", "++model.module.compile=false", "data=physionet"),
            *("data.source.root=/r", "phantom.size=64", "~data.augment", "model=unet,dunet"),
            *("hydra.sweep.dir=x", "hydra/launcher=gpus", "experiment=demo", "trainer.devices=1"),
        ],
        conf,
    )


# What the libraries printed for every job of a sweep before they were silenced.
LIBRARY_NOISE = ("weights_only", "`srun` command is available", "LeafSpec")


@pytest.mark.reliability(case="library warnings of a sweep", entry="train.py -m")
def test_a_sweep_prints_no_library_noise(tmp_path, record_behaviour):
    sweep = tmp_path / "sweep"
    done = train([*TINY, "model=unet,dunet", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(sweep.glob("*/checkpoints/*.ckpt"))) >= 2  # checkpoints were written
    # Networks that learn are not called collapsed.
    assert not any(r["collapsed"] for job in sweep.glob("*-fold1") for r in read_records(job))
    noisy = [line for line in done.stderr.splitlines() if any(n in line for n in LIBRARY_NOISE)]
    assert not noisy, noisy
    record_behaviour(f"exit 0, 2 jobs, stderr holds {len(done.stderr.splitlines())} lines")


@pytest.mark.reliability(
    case="second sweep of another command into one folder", entry="train.py -m (twice)"
)
def test_a_sweep_folder_keeps_its_first_command(tmp_path, record_behaviour):
    sweep = tmp_path / "sweep"
    first = train([*TINY, "model=dunet", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    record = (sweep / "multirun.yaml").read_bytes()
    other = train([*TINY, "model=unet", f"hydra.sweep.dir={sweep}"], tmp_path)
    lines = other.stderr.strip().splitlines()
    assert other.returncode == 2 and len(lines) == 1, other.stderr
    assert "holds the sweep of another command" in lines[0] and "model=dunet" in lines[0]
    assert (sweep / "multirun.yaml").read_bytes() == record
    assert not (sweep / "unet-fold1").exists()
    # The same command again finishes the sweep; its record stays the first's.
    again = train([*TINY, "model=dunet", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert again.returncode == 0 and "already finished, skipped" in again.stdout + again.stderr
    assert (
        yaml.safe_load(record)["hydra"]["overrides"]["task"]
        == yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
    )
    record_behaviour(f"exit 2, multirun.yaml unchanged, no job started: {lines[0]}")


def _independently_collapsed(job: Path, checkpoint: Path) -> int:
    """Validation slices with bleeding, after checking with the checkpoint's own network (plain
    torch, not ichseg's metrics) that its thresholded prediction touches none of their bleeds."""
    import torch

    from ichseg.checkpoint import load_checkpoint
    from ichseg.data.prepare import load_prepared

    data = load_prepared(Path(read_job(job)["cache_dir"]))
    row = {sid: i for i, sid in enumerate(data.ids)}
    rows = [row[sid] for sid in data.splits["folds"][1]["val"]]
    # The "linear" network input: the cache's uint8 slices / 255.
    images = torch.from_numpy(data.images[rows]).float().unsqueeze(1) / 255
    masks = torch.from_numpy(data.masks[rows])
    ckpt = load_checkpoint(checkpoint)
    with torch.no_grad():
        predicted = torch.sigmoid(ckpt.net(images))[:, 0] > ckpt.threshold
    bleeding = masks.flatten(1).any(1)
    assert not (predicted & masks)[bleeding].any()
    return int(bleeding.sum())


@pytest.mark.reliability(
    case="network collapsed by a far too high learning rate",
    entry="train.py, ichseg report, ichseg predict",
)
def test_a_collapsed_network_is_named_everywhere(tmp_path, capsys, record_behaviour):
    import numpy as np

    from ichseg.cli import main
    from ichseg.metrics import COLLAPSED
    from tests.helpers.scans import save_scan, with_air

    sweep = tmp_path / "sweep"
    tiny = [a for a in TINY if a != "logger=none"]  # W&B offline: the run must say so too
    args = [*tiny, "logger=wandb", "model=unet", "model.module.lr=1", f"hydra.sweep.dir={sweep}"]
    done = train(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    job = sweep / "unet-fold1"
    assert read_job(job)["status"] == "done"
    records = read_records(job)
    assert [r["collapsed"] for r in records] == [True, True]
    assert records[-1]["val"]["dice_paper"] > 0.5  # the plausible-looking number
    bleeds = _independently_collapsed(job, job / records[-1]["checkpoint"])
    assert bleeds > 0
    out = done.stdout + done.stderr
    epoch_lines = [line for line in out.splitlines() if "unet-fold1: epoch " in line]
    closing = [line for line in out.splitlines() if "unet-fold1: done" in line]
    assert len(epoch_lines) == 2 and len(closing) == 1, out
    assert all(f"collapsed: {COLLAPSED}" in line for line in [*epoch_lines, *closing])
    (run_file,) = sweep.glob(RUN_FILES)
    logged = [r for r in read_offline_run(run_file).rows if "checkpoint/collapsed" in r]
    assert [r["checkpoint/collapsed"] for r in logged] == [1, 1]

    assert main(["report", str(sweep), "--no-test", "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| 2 (collapsed: fold 1) |" in text
    assert "**U-Net**: no epoch selected; at every one (epochs 1, 2)" in text
    capsys.readouterr()

    scan = save_scan(tmp_path / "scan.nii", with_air(np.full((64, 64, 4), 30.0)))
    ckpt = job / records[-1]["checkpoint"]
    assert main(["predict", str(ckpt), str(scan), "-o", str(tmp_path / "pred")]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1 and str(ckpt) in warning[0], warning
    assert "collapsed at epoch 2" in warning[0]
    # A checkpoint without its validation (written before it carried one): the job's record.
    import torch

    from ichseg.checkpoint import VALIDATION_KEY

    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    del saved[VALIDATION_KEY]
    torch.save(saved, ckpt)
    assert main(["predict", str(ckpt), str(scan), "-o", str(tmp_path / "pred2")]) == 0
    assert "collapsed at epoch 2" in capsys.readouterr().err
    record_behaviour(
        f"lr=1 with batch norm: job done with val paper Dice {records[-1]['val']['dice_paper']:.3f}"
        f" and lesion Dice 0 ({bleeds} validation slices with bleeding, none touched, checked "
        f"with plain torch); epoch line: ...{epoch_lines[-1][-90:]}; records.jsonl collapsed "
        f"true; report: '2 (collapsed: fold 1)', no epoch selected; predict: {warning[0]}",
        did="train.py -m experiment=tiny model=unet model.module.lr=1 fold=1",
    )


@pytest.mark.reliability(
    case="W&B offline report of a killed job's truncated run file",
    entry="ichseg report --source wandb-offline",
)
def test_wandb_offline_report_skips_a_truncated_run_and_keeps_the_fold_override(
    tmp_path, capsys, record_behaviour
):
    from ichseg.cli import main

    sweep = tmp_path / "sweep"
    tiny = [a for a in TINY if a != "logger=none"]
    args = [*tiny, "logger=wandb", "model=unet,dunet", f"hydra.sweep.dir={sweep}"]
    assert train(args, tmp_path).returncode == 0
    report = ["report", str(sweep), "--source", "wandb-offline", "--no-test"]
    assert main([*report, "--out", str(tmp_path / "whole")]) == 0  # fold=1: complete
    capsys.readouterr()
    (killed,) = sweep.glob(f"unet-fold1/{RUN_FILES.split('/', 1)[1]}")
    data = killed.read_bytes()
    killed.write_bytes(data[: len(data) * 2 // 3])
    assert main([*report, "--out", str(tmp_path / "cut")]) == 3  # a job missing: incomplete
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and str(killed) in warning[0] and "truncated" in warning[0], err
    text = (tmp_path / "cut" / "report.md").read_text()
    assert "truncated" in text and "D-Unet" in text
    record_behaviour(
        f"fold=1 sweep: complete (exit 0); run file cut to 2/3: exit 3, {warning[0]}",
        did="ichseg report --source wandb-offline after cutting one job's .wandb file",
    )
