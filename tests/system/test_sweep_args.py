"""The a..b range syntax and the early checks of fold and model overrides."""

import re
import subprocess
import sys

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from ichseg.errors import IchsegError
from ichseg.launch.overrides import check_overrides, expand_ranges
from tests.helpers.runs import ROOT

CONF = ROOT / "conf"


def sweep_values(override: str) -> list:
    """What Hydra itself will sweep over for one override."""
    parsed = OverridesParser.create().parse_overrides([override])[0]
    return list(parsed.sweep_iterator())


def test_inclusive_range_becomes_twenty_jobs_worth_of_values():
    argv = expand_ranges(["-m", "model=unet,dunet", "fold=0..9"])
    assert argv == ["-m", "model=unet,dunet", "fold=range(0,10)"]
    assert sweep_values(argv[2]) == list(range(10))
    assert len(sweep_values("model=unet,dunet")) * len(sweep_values(argv[2])) == 20


def test_ranges_apply_to_any_key_and_leave_other_syntax_alone():
    argv = ["--multirun", "seed=3..5", "fold=range(0,10)", "fold=1,2", "data.size=64", "+x=1..2"]
    out = expand_ranges(argv)
    assert out == [
        "--multirun",
        "seed=range(3,6)",
        "fold=range(0,10)",
        "fold=1,2",
        "data.size=64",
        "+x=range(1,3)",
    ]
    assert sweep_values(out[1]) == [3, 4, 5]
    assert expand_ranges(["-m", "fold=4..4"]) == ["-m", "fold=range(4,5)"]


def test_range_without_multirun_is_an_error():
    with pytest.raises(IchsegError, match=r"fold=0\.\.9 sweeps 10 values: add -m"):
        expand_ranges(["model=unet", "fold=0..9"])


def test_reversed_range_is_an_error():
    with pytest.raises(IchsegError, match="empty range"):
        expand_ranges(["-m", "fold=9..0"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fold=10", "fold=10 is out of range: expected 0..9"),
        ("fold=-1", "fold=-1 is out of range"),
        ("fold=abc", "fold=abc is not an integer"),
        ("fold=1.5", "fold=1.5 is not an integer"),
        ("fold=range(0,11)", "fold=10 is out of range"),
        ("fold=0,3,12", "fold=12 is out of range"),
        (
            "model=resnet",
            "model=resnet is unknown: expected one of attention_unet, dunet, segresnet, unet",
        ),
        ("model=unet,vnet", "model=vnet is unknown"),
    ],
)
def test_bad_fold_or_model_is_rejected(override, message):
    with pytest.raises(IchsegError, match=re.escape(message)):
        check_overrides([override], CONF)


def test_good_overrides_pass_and_n_folds_override_is_honoured():
    check_overrides(["fold=range(0,10)", "model=unet,dunet", "fold=9"], CONF)
    check_overrides(["data.n_folds=5", "fold=4"], CONF)
    with pytest.raises(IchsegError, match=r"fold=5 is out of range: expected 0\.\.4"):
        check_overrides(["data.n_folds=5", "fold=5"], CONF)


# The case names are rows of docs/reliability.md (tests/helpers/reliability_table.py).
CASES = {
    "fold=0..9 sweeps 10 values: add -m": "range without -m",
    "fold=10 is out of range": "fold outside 0-9",
    "fold=abc is not an integer": "fold not an integer",
    "model=foo is unknown": "unknown model=",
}


@pytest.mark.reliability(entry="train.py")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fold=0..9"], "fold=0..9 sweeps 10 values: add -m"),
        (["-m", "fold=10"], "fold=10 is out of range"),
        (["-m", "model=unet,dunet", "fold=abc"], "fold=abc is not an integer"),
        (["model=foo"], "model=foo is unknown"),
    ],
)
def test_train_py_fails_with_one_line_before_any_job(args, message, tmp_path, record_behaviour):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "ICHSEG_ROOT": str(tmp_path), "WANDB_MODE": "disabled"},
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert not (tmp_path / "experiments").exists()
    record_behaviour(
        f"exit 2, no job started, nothing written: {lines[0]}",
        case=CASES[message],
        did=f"python train.py {' '.join(args)}",
    )
