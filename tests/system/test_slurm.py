"""`hydra/launcher=slurm` on a real single-node SLURM cluster (tests/helpers/slurm_cluster.py).

The cluster is installed from Debian's packages when missing (as root, like CI) and started
once for this module. Daemon logs stay in its folder and are shown only when a test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from submitit.core.utils import FailedJobError, UncompletedJobError

from ichseg.errors import IchsegError
from ichseg.jobs.records import read_job, read_records
from ichseg.launch.slurm import check_time_limit, wait_for_jobs
from tests.helpers.runs import ROOT
from tests.helpers.slurm_cluster import ClusterError, SlurmCluster, missing_binaries, wait_for

# Small CPU jobs for a 2-core node: no GPU, one core and 1 GB each, two at a time.
SLURM_ARGS = [
    "hydra/launcher=slurm",
    "hydra.launcher.timeout_min=5",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.array_parallelism=2",
    "num_threads=1",
    "experiment=tiny",
    "logger=none",
]


class FakeJob:
    """A submitit job as the launcher sees it: done() turns true after `polls` calls."""

    def __init__(self, job_id, outcome, state="COMPLETED", stderr="", polls=0, tmp=Path()):
        self.job_id, self.outcome, self.state, self.polls = job_id, outcome, state, polls
        self.paths = SimpleNamespace(stderr=tmp / f"{job_id}_0_log.err")
        self.paths.stderr.write_text(stderr)

    def done(self) -> bool:
        self.polls -= 1
        return self.polls < 0

    def results(self) -> list:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return [self.outcome]


def job_return(status: JobStatus, value) -> JobReturn:
    """What Hydra's run_job hands back from a job: its status and return value (or error)."""
    ret = JobReturn()
    ret.status, ret._return_value = status, value
    return ret


def test_failed_jobs_end_the_sweep_with_one_line_naming_each(tmp_path):
    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nsubmitit.core.utils.'
    trace += "UncompletedJobError: Job not requeued because: timed-out too many times."
    jobs = [
        FakeJob("7_0", job_return(JobStatus.COMPLETED, 0.8), polls=3, tmp=tmp_path),
        FakeJob(
            "7_1",
            UncompletedJobError("Job 7_1 (task: 0) has not produced any output"),
            state="CANCELLED by 0",
            stderr="x\ntrain.py: error: data.source.root=/nope: not found\nsrun: error: task 0\n",
            tmp=tmp_path,
        ),
        FakeJob("7_2", job_return(JobStatus.FAILED, ValueError("bad lr\nmore")), tmp=tmp_path),
        FakeJob(
            "7_3",
            FailedJobError(f"Job (task=0) failed:\n{'-' * 22}\n{trace}\n{'-' * 22}\nSee logs"),
            tmp=tmp_path,
        ),
    ]
    names = ["model=unet fold=0", "model=unet fold=1", "model=dunet fold=0", "model=dunet fold=1"]
    with pytest.raises(IchsegError) as info:
        wait_for_jobs(jobs, names, "/sw", poll_s=0)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "3 of 4 SLURM jobs failed: job 7_1 (model=unet fold=1) ended CANCELLED by 0 with no "
        f"result (data.source.root=/nope: not found), log {tmp_path / '7_1_0_log.err'}; "
        f"job 7_2 (model=dunet fold=0) ValueError: bad lr, log {tmp_path / '7_2_0_log.err'}; "
        "job 7_3 (model=dunet fold=1) submitit.core.utils.UncompletedJobError: Job not requeued "
        "because: timed-out too many times., log "
    )
    assert message.endswith(
        "the other 1 finished; to resume, run the same command with hydra.sweep.dir=/sw"
    )
    assert jobs[0].polls < 0  # it waited for the job still running before failing the sweep


def test_finished_jobs_return_their_results_in_sweep_order(tmp_path):
    jobs = [
        FakeJob(f"8_{i}", job_return(JobStatus.COMPLETED, i), polls=3 - i, tmp=tmp_path)
        for i in range(3)
    ]
    results = wait_for_jobs(jobs, ["a", "b", "c"], "/sw", poll_s=0)
    assert [r.return_value for r in results] == [0, 1, 2]


def test_a_time_limit_shorter_than_the_warning_signal_is_refused():
    with pytest.raises(IchsegError, match=r"timeout_min=2 is too short.*at least 3"):
        check_time_limit(2, 120)
    check_time_limit(3, 120)
    with pytest.raises(IchsegError, match="at least 6"):
        check_time_limit(5, 300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> SlurmCluster:
    if os.geteuid() != 0:
        pytest.skip("the test SLURM cluster runs its daemons as root")
    if missing_binaries() and shutil.which("apt-get") is None:
        pytest.skip(f"SLURM is not installed ({', '.join(missing_binaries())}) and no apt-get")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (ClusterError, subprocess.SubprocessError) as exc:
        cluster.stop()
        pytest.fail(f"could not start the test SLURM cluster: {exc}\n{cluster.logs()}")
    yield cluster
    cluster.stop()


def sweep_env(cluster: SlurmCluster, root: Path) -> dict[str, str]:
    """train.py's environment: the test cluster's SLURM_CONF, data and experiments in `root`."""
    return {**cluster.env, "ICHSEG_ROOT": str(root), "WANDB_MODE": "disabled"}


def start_sweep(cluster: SlurmCluster, root: Path, args: list[str]) -> subprocess.Popen:
    """`train.py -m hydra/launcher=slurm ...` in the background, output to root/sweep.{out,err}."""
    with open(root / "sweep.out", "w") as out, open(root / "sweep.err", "w") as err:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), "-m", *SLURM_ARGS, *args],
            stdout=out,
            stderr=err,
            cwd=root,
            env=sweep_env(cluster, root),
        )


def finish(proc: subprocess.Popen, root: Path, timeout_s: float) -> tuple[int, str]:
    """Wait (at most `timeout_s`) for the sweep process; its exit status and stderr."""
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the sweep still ran after {timeout_s} s:\n{(root / 'sweep.out').read_text()}")
    return code, (root / "sweep.err").read_text()


def slurm_ids(sweep: Path) -> list[str]:
    """SLURM ids of the sweep's jobs: submitit keeps one folder per job, with its pickle."""
    folders = (sweep / ".submitit").iterdir()
    return sorted(p.name for p in folders if (p / f"{p.name}_submitted.pkl").exists())


# States SLURM accounting shows while a task is still winding down after its work finished.
UNSETTLED = ("PENDING", "RUNNING", "COMPLETING", "REQUEUE_HOLD", "RESIZING", "SUSPENDED")


def sacct_states(cluster: SlurmCluster, job: str, *flags: str) -> list[str]:
    """`JobID|State` rows of the job's allocations (no steps) from SLURM accounting, once every
    row has settled: accounting can still say RUNNING for a moment after the sweep collected a
    task's result (seen once in a full CI run)."""
    rows: list[str] = []

    def settled() -> bool:
        out = cluster.run("sacct", "-n", "-X", "-P", "-o", "JobID,State", *flags, "-j", job)
        rows[:] = out.stdout.split()
        return bool(rows) and not any(row.split("|")[1] in UNSETTLED for row in rows)

    wait_for(f"SLURM accounting of {job} to settle", settled, timeout_s=60)
    return rows


@pytest.mark.slow
def test_sweep_runs_as_one_slurm_array_and_make_report_reads_it(cluster, tmp_path):
    sweep = tmp_path / "experiments" / "tiny" / "slurm"
    proc = start_sweep(
        cluster, tmp_path, ["model=unet,dunet", "fold=0..9", f"hydra.sweep.dir={sweep}"]
    )
    code, err = finish(proc, tmp_path, timeout_s=900)
    assert code == 0, err[-3000:] + cluster.logs()

    names = sorted(f"{m}-fold{k}" for m in ("unet", "dunet") for k in range(10))
    assert sorted(p.name for p in sweep.glob("*-fold*")) == names
    ids = slurm_ids(sweep)
    arrays = {i.split("_")[0] for i in ids}
    assert len(ids) == 20 and len(arrays) == 1, ids
    for name in names:
        job_dir = sweep / name
        assert read_job(job_dir)["status"] == "done"
        assert [r["epoch"] for r in read_records(job_dir)] == [1, 2]
        hydra_job = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]
        assert hydra_job["id"] in ids  # Hydra's job id is the array task that ran it
    rows = sacct_states(cluster, arrays.pop())
    assert sorted(rows) == sorted(f"{i}|COMPLETED" for i in ids), rows

    # -o: the venv counts as installed (the suite runs in it), so make only runs the report.
    make = ["make", "-C", str(ROOT), "-o", f"{sys.prefix}/.ichseg-installed"]
    report = subprocess.run(
        [*make, "report", f"VENV={sys.prefix}", f"SWEEP={sweep}"],
        capture_output=True,
        text=True,
        env=sweep_env(cluster, tmp_path),
        timeout=600,
    )
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-3000:]
    text = (sweep / "report" / "report.md").read_text()
    assert "unet" in text and "dunet" in text


@pytest.mark.slow
def test_preempted_job_is_requeued_and_resumes_from_last_checkpoint(cluster, tmp_path):
    """Interrupted twice: by submitit's signal (sent before a time limit, or at pre-emption),
    then by `scontrol requeue` (what a REQUEUE pre-emption does); it ends with every epoch."""
    sweep = tmp_path / "experiments" / "tiny" / "preempt"
    # Long enough that the requeued job is still training when the test looks, idle or not.
    epochs = 120
    args = ["model=dunet", "fold=1", f"trainer.max_epochs={epochs}", f"hydra.sweep.dir={sweep}"]
    proc = start_sweep(cluster, tmp_path, args)
    job_dir = sweep / "dunet-fold1"

    def training(resumed: bool, records: int) -> bool:
        """The job trains (after a resume, or not), has written more than `records` records and
        a last.ckpt to resume from (written just after an epoch's record: a job stopped between
        the two trains again from the last.ckpt before, here from scratch)."""
        assert proc.poll() is None, (tmp_path / "sweep.err").read_text()[-3000:]
        state = read_job(job_dir) or {}
        return (
            state.get("status") == "running"
            and bool(state.get("resumed_from")) == resumed
            and len(read_records(job_dir)) > records
            and (job_dir / "checkpoints" / "last.ckpt").is_file()
        )

    wait_for("the first checkpoint", lambda: training(resumed=False, records=0), 300)
    (job,) = slurm_ids(sweep)
    assert cluster.run("scancel", "--signal=USR2", job).returncode == 0
    wait_for("the requeued job to resume", lambda: training(resumed=True, records=0), 300)
    resumed_at = len(read_records(job_dir))
    wait_for("a checkpoint after the resume", lambda: training(True, resumed_at), 300)
    assert cluster.run("scontrol", "requeue", job).returncode == 0
    code, err = finish(proc, tmp_path, timeout_s=600)
    assert code == 0, err[-3000:] + cluster.logs()

    state = read_job(job_dir)
    assert state["status"] == "done"
    assert state["resumed_from"] == str(job_dir / "checkpoints" / "last.ckpt")
    assert [r["epoch"] for r in read_records(job_dir)] == list(range(1, epochs + 1))
    attempts = sacct_states(cluster, job, "-D")  # -D: every attempt, requeued ones too
    assert sorted(row.split("|")[1] for row in attempts) == [
        "COMPLETED",
        "REQUEUED",
        "REQUEUED",
    ], attempts


@pytest.mark.slow
def test_scancel_ends_the_sweep_with_one_line_naming_the_job(cluster, tmp_path):
    sweep = tmp_path / "experiments" / "tiny" / "cancel"
    args = ["model=dunet", "fold=3", "trainer.max_epochs=1000", f"hydra.sweep.dir={sweep}"]
    proc = start_sweep(cluster, tmp_path, args)
    job_dir = sweep / "dunet-fold3"
    wait_for("the job to train", lambda: proc.poll() is None and bool(read_records(job_dir)), 300)
    (job,) = slurm_ids(sweep)
    started = time.monotonic()
    assert cluster.run("scancel", job).returncode == 0
    code, err = finish(proc, tmp_path, timeout_s=180)
    assert code != 0
    assert time.monotonic() - started < 180
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "SLURM jobs failed" in ln]
    assert line.startswith(f"1 of 1 SLURM jobs failed: job {job} ("), err
    assert "model=dunet fold=3" in line and "ended CANCELLED" in line
    assert f"hydra.sweep.dir={sweep}" in line
