"""The report from each source: the sweep folder, W&B offline run files, the W&B API."""

from __future__ import annotations

import csv
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from ichseg.errors import IchsegError
from ichseg.jobs.records import read_history, read_records
from ichseg.metrics import PROTOCOLS
from ichseg.report.build import build_report
from ichseg.report.compute import compute
from ichseg.report.table import TABLE1_COLUMNS
from ichseg.sweeps.local import collect_sweep
from ichseg.sweeps.wandb_offline import (
    BLOCK,
    RUN_FILES,
    TruncatedRunFile,
    collect_wandb_offline,
    read_log,
)

# The Dice key of each Table 1 protocol, from the metric registry.
DICE_KEYS = {name: PROTOCOLS[name].keys[0] for name in TABLE1_COLUMNS}


def read_csv(path: Path) -> list[dict[str, str]]:
    """table1.csv as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def ichseg_cli(args: list[str], env: dict[str, str] | None = None, timeout: int = 300):
    """Run the `ichseg` command with the venv's interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "ichseg.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment where W&B has no credentials of the user and no reachable server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    # Port 9 (discard) on loopback: nothing listens, so no request can leave this machine.
    env.update(HOME=str(home), WANDB_CONFIG_DIR=str(home), WANDB_DIR=str(home))
    env.update({"WANDB_BASE_URL": "http://127.0.0.1:9", **extra})
    return env


@pytest.mark.slow
def test_offline_wandb_files_give_the_table1_of_the_records(finished_sweep, tmp_path):
    local = collect_sweep(finished_sweep)
    offline = collect_wandb_offline(finished_sweep)
    assert len(list(finished_sweep.glob(RUN_FILES))) == 20
    assert [(j.model, j.fold, j.status) for j in offline.jobs] == [
        (j.model, j.fold, j.status) for j in local.jobs
    ]
    for job in offline.jobs:
        assert job.dir is None and job.config["fold"] == job.fold
        assert job.config["model"]["name"] == job.model
        # Records are the checkpoint/* metrics, logged as the float64 values records.jsonl holds.
        recorded = read_records(finished_sweep / job.name)
        assert job.records == [{**r, "checkpoint": None} for r in recorded]
        # History rows went through Lightning's float32 logging.
        history = read_history(finished_sweep / job.name)
        assert [h.keys() for h in job.history] == [h.keys() for h in history]
        for got, want in zip(job.history, history, strict=True):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-7, nan_ok=True)
    assert offline.missing_jobs == [] and offline.missing_records == []
    assert any("group tiny/s1" in note for note in offline.notes)

    want = read_csv(build_report(compute(local), tmp_path / "local") / "table1.csv")
    got = read_csv(build_report(compute(offline), tmp_path / "wandb") / "table1.csv")
    assert len(got) == len(want) == 2 * 2 * len(DICE_KEYS)  # models x checkpoint epochs x protocols
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for column in g:
            if column in ("architecture", "protocol"):
                assert g[column] == w[column]
            else:
                assert float(g[column] or "nan") == pytest.approx(
                    float(w[column] or "nan"), rel=1e-12, nan_ok=True
                )


@pytest.mark.slow
def test_report_command_table1_matches_numpy_over_the_records(finished_sweep):
    result = ichseg_cli(["report", str(finished_sweep)])
    assert result.returncode == 0, result.stderr[-3000:]
    out = finished_sweep / "report"
    rows = read_csv(out / "table1.csv")
    assert {(r["architecture"], r["epoch"], r["protocol"]) for r in rows} == {
        (m, str(e), p) for m in ("unet", "dunet") for e in (1, 2) for p in DICE_KEYS
    }
    for row in rows:
        values = [
            r["val"][DICE_KEYS[row["protocol"]]]
            for fold in range(10)
            for r in read_records(finished_sweep / f"{row['architecture']}-fold{fold}")
            if r["epoch"] == int(row["epoch"])
        ]
        finite = [v for v in values if v is not None]
        assert len(values) == int(row["n_folds"]) == 10
        if len(finite) < len(values):
            # A fold without a value (tiny folds hold less than one onebatch batch): no mean.
            assert row["val_dice_mean"] == "" and row["val_dice_std"] == "", row
            continue
        assert float(row["val_dice_mean"]) == pytest.approx(np.mean(finite), abs=1e-12)
        assert float(row["val_dice_std"]) == pytest.approx(np.std(finite, ddof=1), abs=1e-12)
    text = (out / "report.md").read_text()
    assert "- Training data: synthetic phantom (not patient data) (`phantom`;" in text
    assert "- Jobs found: 20 (20 done)." in text


@pytest.mark.slow
def test_report_command_reads_the_offline_wandb_files(finished_sweep, tmp_path):
    from ichseg.cli import main

    out = tmp_path / "wb"
    args = ["report", str(finished_sweep), "--source", "wandb-offline", "--out", str(out)]
    assert main(args) == 0
    text = (out / "report.md").read_text()
    assert "Read from 20 W&B offline run files" in text and "Jobs found: 20 (20 done)" in text


def test_wandb_source_without_credentials_fails_with_one_line(tmp_path):
    start = time.monotonic()
    result = ichseg_cli(
        ["report", "--source", "wandb", "--project", "me/ichseg", "--group", "tiny/s1"],
        env=offline_env(tmp_path),
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("ichseg report: error: W&B me/ichseg, group 'tiny/s1': ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 60


def test_wandb_api_that_never_answers_times_out(tmp_path):
    """A server that accepts connections and never replies: the API call gives up, one line."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        env = offline_env(
            tmp_path, WANDB_API_KEY="x" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{port}"
        )
        code = (
            "import sys\n"
            "import ichseg.sweeps.wandb_api as source\n"
            "from ichseg.cli import console\n"
            "source.API_TIMEOUT_S = 2\n"
            "sys.argv = ['ichseg', 'report', '--source', 'wandb', '--project', 'me/ichseg', "
            "'--group', 'tiny/s1']\n"
            "console()\n"
        )
        start = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith(
        "ichseg report: error: W&B me/ichseg, group 'tiny/s1': the W&B API cannot be read"
    )
    assert len(result.stderr.strip().splitlines()) == 1
    # wandb's own default is 19 s per request; the 2 s asked for must be what limits it.
    assert elapsed < 15


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "wandb", "--group", "g"], "needs --project entity/project and --group"),
        (["--source", "wandb", "--project", "me", "--group", "g"], "expected entity/project"),
        (["x", "--source", "wandb", "--project", "me/p", "--group", "g"], "reads no sweep"),
        (["--project", "me/p"], "go with --source wandb, not local"),
    ],
)
def test_wandb_arguments_are_checked_before_any_request(args, message, tmp_path, capsys):
    from ichseg.cli import main

    assert main(["report", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def frame(records: list[bytes]) -> bytes:
    """A W&B run file holding `records`, framed as the LevelDB log format specifies."""
    out = bytearray(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))
    for data in records:
        first = True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < 7:
                out += bytes(left)
                continue
            n = min(len(data), left - 7)
            chunk, data = data[:n], data[n:]
            last = not data
            kind = (1 if last else 2) if first else (4 if last else 3)
            crc = zlib.crc32(chunk, zlib.crc32(bytes([kind])))
            out += struct.pack("<IHB", crc, n, kind) + chunk
            first = False
            if last:
                break
    return bytes(out)


def test_run_file_framing_is_read_across_blocks(tmp_path):
    rng = np.random.default_rng(0)
    records = [rng.bytes(n) for n in (10, 32768 - 7 - 7 - 10 - 3, 5, 70000, 0, 300)]
    path = tmp_path / "run-x.wandb"
    path.write_bytes(frame(records))
    assert list(read_log(path)) == records
    # A killed run leaves a torn last record: the complete ones are read, then it is named.
    path.write_bytes(frame(records)[:-100])
    complete = []
    with pytest.raises(TruncatedRunFile, match=r"truncated at byte \d+ in the middle of a record"):
        complete.extend(read_log(path))
    assert complete == records[:-1]
    corrupt = bytearray(frame(records))
    corrupt[40000] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(IchsegError, match="corrupt record at byte"):
        list(read_log(path))
    path.write_bytes(b"not a run file")
    with pytest.raises(IchsegError, match="not a W&B run file"):
        list(read_log(path))
    with pytest.raises(IchsegError, match="no W&B offline run file"):
        collect_wandb_offline(tmp_path)


def test_runs_of_a_resumed_job_are_merged_later_run_winning():
    from ichseg.sweeps.model import Job
    from ichseg.sweeps.wandb_api import merge_jobs

    def job(run: str, epochs: list[int]) -> Job:
        records = [
            {"epoch": e, "train": {}, "val": {"dice_paper": float(e), "run": run}} for e in epochs
        ]
        history = [{"epoch": float(e), f"val/{run}": 1.0} for e in epochs]
        state = {"wandb_run": run, "started": run}
        return Job("dunet", 2, "done", {}, state=state, records=records, history=history)

    other = job("c", [1])
    other.fold = 3
    merged = merge_jobs(
        [("2026-01-02", job("b", [2, 3])), ("2026-01-01", job("a", [1, 2])), ("", other)]
    )
    assert [(j.model, j.fold) for j in merged] == [("dunet", 2), ("dunet", 3)]
    first = merged[0]
    assert [(r["epoch"], r["val"]["run"]) for r in first.records] == [(1, "a"), (2, "b"), (3, "b")]
    assert first.history[1] == {"epoch": 2.0, "val/a": 1.0, "val/b": 1.0}
    assert first.state["wandb_runs"] == ["a", "b"] and first.state["started"] == "a"
    assert merged[1] is other
