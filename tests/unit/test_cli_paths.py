"""The `ichseg` command: output paths that cannot be written are one line, help shows defaults."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ichseg import cli
from tests.unit.test_import_layers import PACKAGE, import_graph


def _file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("keep me\n")
    return path


# case -> (the output path to give, given a tmp folder; what the line must name)
BAD_OUTPUTS = {
    "OUT is a file": (_file, "exists and is not a folder"),
    "OUT under a file": (lambda tmp: _file(tmp) / "sub", "is not a folder"),
    "OUT name too long": (lambda tmp: tmp / ("x" * 300), "File name too long"),
}


def _command(name: str, release: Path, tmp: Path, out: Path) -> list[str]:
    return {
        "phantom": ["phantom", str(out), "--patients", "2", "--size", "32"],
        "prepare": ["prepare", str(release), str(out), "--size", "32"],
        "report": ["report", str(tmp), "--out", str(out)],
        "bench": ["bench", "--experiments", "tiny", "--sections", "epoch", "--out", str(out)],
    }[name]


@pytest.mark.reliability(entry="ichseg phantom / prepare / report / bench --out")
@pytest.mark.parametrize("case", BAD_OUTPUTS)
@pytest.mark.parametrize("command", ["phantom", "prepare", "report", "bench"])
def test_unusable_output_path_is_one_line(
    command, case, release, tmp_path, capsys, record_behaviour
):
    make, fragment = BAD_OUTPUTS[case]
    out = make(tmp_path)
    code = cli.main(_command(command, release, tmp_path, out))
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith(f"ichseg {command}: error: "), captured.err
    assert fragment in lines[0] and out.name[:50] in lines[0], lines[0]
    if (tmp_path / "a-file").exists():
        assert (tmp_path / "a-file").read_text() == "keep me\n"
    record_behaviour(f"exit 2: {lines[0]}", case=f"{command}: {case}")


@pytest.mark.parametrize(
    "command", ["phantom", "prepare", "predict", "evaluate", "report", "bench"]
)
def test_help_of_every_subcommand_shows_its_defaults(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = capsys.readouterr().out
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    shown = [
        a
        for a in sub._actions
        if a.option_strings and a.default not in (None, False) and a.dest != "help"
    ]
    assert shown, command
    for action in shown:
        assert f"{action.default}" in text.replace("\n", " "), (command, action.dest)
    assert "default:" in text


@pytest.mark.parametrize(
    ("command", "stage"),
    [
        ("phantom", "data"),
        ("prepare", "data"),
        ("predict", "inference"),
        ("evaluate", "inference"),
        ("report", "report"),
        ("dashboard", "dashboard"),
        ("nnunet export", "nnunet"),
        ("nnunet import", "nnunet"),
        ("bench", "bench"),
    ],
)
def test_every_command_is_declared_beside_its_stage(command, stage):
    parser = cli.build_parser()
    for word in command.split():
        parser = next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        ).choices[word]
    assert parser.get_default("func").__module__ == f"ichseg.{stage}.commands"


def test_the_shared_argument_rules_import_no_stage():
    """Stages import ichseg.arguments to declare their commands, never the other way round."""
    stages = {f"ichseg.{init.parent.name}" for init in PACKAGE.glob("*/__init__.py")}
    assert not import_graph()["ichseg.arguments"] & stages


@pytest.mark.reliability(case="prepare --n-folds / --test-fraction", entry="ichseg prepare")
def test_prepare_takes_folds_and_test_fraction(release, tmp_path, capsys, record_behaviour):
    args = ["prepare", str(release), str(tmp_path), "--size", "32", "--split", "patient"]
    assert cli.main([*args, "--n-folds", "3", "--test-fraction", "0.2"]) == 0
    line = capsys.readouterr().out.strip()
    assert "3 folds" in line, line
    splits = json.loads(next(tmp_path.glob("*/splits.json")).read_text())
    assert len(splits["folds"]) == 3
    record_behaviour(line, did="--split patient --n-folds 3 --test-fraction 0.2 on 12 patients")


@pytest.mark.reliability(entry="ichseg phantom / prepare --seed")
@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999999"])
@pytest.mark.parametrize("command", ["phantom", "prepare"])
def test_a_seed_outside_what_lightning_and_numpy_take_is_one_line(
    command, seed, release, tmp_path, capsys, record_behaviour
):
    out = tmp_path / "out"
    assert cli.main([*_command(command, release, tmp_path, out), "--seed", seed]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    said = {
        "phantom": f"phantom seed: expected an integer in 0..4294967295, found {seed}",
        "prepare": f"data.seed={seed} is not allowed: expected an integer >= 0 and <= 4294967295",
    }
    assert said[command] in err, err
    assert not out.exists()
    record_behaviour(f"exit 2, nothing written: {err}", case=f"{command} --seed {seed}")


def test_the_largest_seed_is_taken(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        cli.main(["phantom", str(out), "--patients", "2", "--size", "16", "--seed", "4294967295"])
        == 0
    )
    assert json.loads((out / "phantom.json").read_text())["seed"] == 4294967295


@pytest.mark.reliability(entry="ichseg phantom --size")
@pytest.mark.parametrize("size", ["15", "2049", "99999999"])
def test_a_phantom_size_outside_what_the_generator_draws_is_one_line(
    size, tmp_path, capsys, record_behaviour
):
    out = tmp_path / "out"
    assert cli.main(["phantom", str(out), "--patients", "2", "--size", size]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ichseg phantom: error: phantom size must be 16..2048 pixels, found {size}", err
    assert not out.exists()
    record_behaviour(f"exit 2, nothing written: {err}", case=f"phantom --size {size}")


@pytest.mark.reliability(
    case="prepare --size far beyond memory",
    did="--size 10000000: each cache array would be petabytes, past any address space",
    entry="ichseg prepare",
)
def test_an_allocation_no_machine_can_make_is_one_line(release, tmp_path, capsys, record_behaviour):
    out = tmp_path / "out"
    assert cli.main(["prepare", str(release), str(out), "--size", "10000000"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ichseg prepare: error: out of memory: Unable to allocate "), err
    assert "10000000, 10000000" in err, err
    assert not out.exists()
    record_behaviour(f"exit 1, nothing left in OUT: {err}")


@pytest.mark.reliability(
    case="report --external of one folder twice",
    did="--external physionet=REL --external phantom=./REL/ (one folder, two spellings)",
    entry="ichseg report",
)
def test_an_external_folder_given_twice_is_one_line(
    release, tmp_path, capsys, monkeypatch, record_behaviour
):
    """Scored twice, it would show as two external validations of the same patients."""
    monkeypatch.chdir(release.parent)
    twice = [f"physionet={release.name}", f"phantom=./{release.name}/"]
    argv = ["report", str(tmp_path), "--out", str(tmp_path / "report")]
    assert cli.main([*argv, "--external", twice[0], "--external", twice[1]]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ichseg report: error: --external '{twice[1]}': ./{release.name}/ is already "
        f"--external '{twice[0]}'; give each external data set once"
    ), err
    assert not (tmp_path / "report").exists()
    record_behaviour(f"exit 2, nothing written: {err}")


@pytest.mark.reliability(
    case="phantom into a new folder, disk full mid-way",
    did="the 3rd NIfTI write raises ENOSPC; OUT and its parent did not exist",
    entry="ichseg phantom",
)
def test_a_phantom_that_fails_midway_leaves_nothing(
    tmp_path, capsys, monkeypatch, record_behaviour
):
    from ichseg.data import phantom

    save, calls = phantom._save_nifti, []

    def full_disk_at_the_third(data, affine, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        save(data, affine, path)

    monkeypatch.setattr(phantom, "_save_nifti", full_disk_at_the_third)
    out = tmp_path / "new" / "release"
    assert cli.main(["phantom", str(out), "--patients", "2", "--size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on device" in err, err
    assert "nothing was written" in err, err
    # Neither the release, its temporary, its lock file nor the parent made for them is left.
    assert list(tmp_path.iterdir()) == []
    record_behaviour(f"exit 2, nothing left: {err}")
