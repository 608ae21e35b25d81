"""A data source named on the command line is either the one there or refused in one line that
says why and what to use: another phantom is told apart without advice to remove anything, and
an unknown source name lists the valid ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ichseg.data.phantom import write_phantom
from tests.helpers.runs import ROOT

pytestmark = pytest.mark.slow

SOURCES = "bhsd, instance22, nnunet_raw, phantom, physionet"


def ichseg(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """The `ichseg` command as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ichseg.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """The refusal's one line, after checking the exit status."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"ichseg {command}: error: "), lines[0]
    return lines[0]


@pytest.mark.reliability(case="phantom folder of other parameters", entry="ichseg prepare")
def test_another_phantom_is_told_apart_and_left_as_it_is(tmp_path, record_behaviour):
    release = write_phantom(tmp_path / "ph", patients=2, size=16, seed=3, layout="bhsd")
    before = files(release)
    args = ["prepare", release, tmp_path / "cache", "--source", "phantom", "--size", 16]
    line = one_line(ichseg(args, tmp_path), "prepare")
    # What differs, side by side with what `--source phantom` asked for (the default phantom).
    holds = "holds a phantom with layout=bhsd, patients=2, size=16, seed=3"
    assert f"{holds} where layout=physionet, patients=75, size=512, seed=0 was expected" in line
    assert "another folder" in line and "--source bhsd" in line, line
    assert "remove" not in line and "delete" not in line, line
    assert files(release) == before and not (tmp_path / "cache").exists()
    record_behaviour(
        f"exit 2, the folder unchanged: {line}",
        did="ichseg prepare PH OUT --source phantom, PH written by ichseg phantom --patients 2 "
        "--size 16 --seed 3 --layout bhsd",
    )


@pytest.mark.reliability(case="phantom into a user's folder", entry="ichseg phantom")
def test_a_phantom_into_a_users_folder_never_advises_removing_it(tmp_path, record_behaviour):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    line = one_line(ichseg(["phantom", mine, "--patients", 1, "--size", 16], tmp_path), "phantom")
    assert "not a phantom release" in line and "choose another one" in line, line
    assert "remove" not in line and "delete" not in line, line
    assert files(mine) == {"notes.txt": b"mine\n"}
    record_behaviour(f"exit 2, the folder unchanged: {line}", did="ichseg phantom MINE")


@pytest.mark.reliability(case="unknown data source name", entry="ichseg report / evaluate")
@pytest.mark.parametrize("command", ["report", "evaluate"])
def test_an_unknown_source_name_lists_the_valid_ones(command, tmp_path, record_behaviour):
    external = tmp_path / "ext"
    external.mkdir()
    (tmp_path / "sweep").mkdir()
    if command == "report":
        args = ["report", tmp_path / "sweep", "--external", f"foo={external}"]
        args += ["--out", tmp_path / "out"]
        named = f"--external foo={external}: no {ROOT}/conf/data/foo.yaml"
    else:
        args = ["evaluate", tmp_path / "a.ckpt", "--source", "foo", "--root", external]
        args += ["-o", tmp_path / "out"]
        named = f"--source foo: no {ROOT}/conf/data/foo.yaml"
    line = one_line(ichseg(args, tmp_path), command)
    assert named in line and f"expected one of {SOURCES} or a class's import path" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext", "sweep"]
    record_behaviour(
        f"exit 2, nothing written: {line}",
        did=" ".join(map(str, args)).replace(str(tmp_path), "<tmp>"),
    )
