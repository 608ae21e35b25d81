"""A network the project does not ship, added as one YAML file: it trains in a sweep beside the
U-Net, the report describes and counts it, and predict runs its checkpoints, with no code change."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ichseg.cli import main
from tests.helpers.runs import train
from tests.helpers.scans import save_scan, with_air

# Pooling once and upsampling back: sizes must be even, which ichseg finds by a probe pass,
# since the class declares no size_divisor.
NETWORK = '''
"""A lab's own network."""
from torch import nn


class PoolNet(nn.Module):
    def __init__(self, channels: int = 4):
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
        )
        self.decode = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(channels, 1, 1))

    def forward(self, x):
        return self.decode(self.encode(x))
'''
MODEL_YAML = """
defaults:
  - module: segmentation
  - _self_

name: poolnet
display_name: Pool net
width: 1.0
module:
  net:
    _target_: my_lab.nets.PoolNet
    channels: 4
architecture:
  kernel: 3x3
  pool: 2x2 max
"""
CHANNELS = 4
# By hand: weights and biases of the three convolutions.
PARAMETERS = (1 * CHANNELS * 9 + CHANNELS) + (CHANNELS * CHANNELS * 9 + CHANNELS) + CHANNELS + 1
# Multiply-adds x 2 of the convolutions at 256² (first and last) and 128² (second), no biases.
FLOPS = 2 * (9 * CHANNELS * 256**2 + 9 * CHANNELS * CHANNELS * 128**2 + CHANNELS * 256**2)


@pytest.fixture
def outside(tmp_path):
    """A package on its own path and a config folder holding only the network's YAML."""
    lab = tmp_path / "lab"
    (lab / "my_lab").mkdir(parents=True)
    (lab / "my_lab" / "__init__.py").write_text("")
    (lab / "my_lab" / "nets.py").write_text(textwrap.dedent(NETWORK))
    conf = tmp_path / "lab_conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "poolnet.yaml").write_text(MODEL_YAML)
    return lab, conf


def _sweep_args(conf: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "experiment=tiny",
        "logger=none",
        "num_threads=1",
        "deterministic=true",
        f"hydra.searchpath=[file://{conf}]",
        *extra,
    ]


@pytest.mark.slow
def test_a_network_outside_the_package_trains_reports_and_predicts(
    outside, tmp_path, monkeypatch, capsys
):
    lab, conf = outside
    sweep = tmp_path / "sweep"
    env = {"PYTHONPATH": str(lab)}
    args = _sweep_args(conf, "model=unet,poolnet", "fold=0,1", f"hydra.sweep.dir={sweep}")
    proc = train(args, tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    monkeypatch.syspath_prepend(str(lab))
    assert main(["report", str(sweep), "--out", str(tmp_path / "report")]) == 0
    report = tmp_path / "report"
    text = (report / "report.md").read_text()
    assert "| Pool net | NA | 3x3 | 2x2 max | NA |" in text
    described = json.loads((report / "summary.json").read_text())["architectures"]["poolnet"]
    assert described["network"] == "my_lab.nets.PoolNet"
    assert (described["parameters"], described["flops_per_slice"]) == (PARAMETERS, FLOPS)
    # In Table 1 at every checkpoint epoch (selected or not: two tiny epochs may leave it
    # collapsed, which the report names).
    rows = list(csv.DictReader((report / "table1.csv").open()))
    assert {int(r["epoch"]) for r in rows if r["architecture"] == "poolnet"} == {1, 2}

    scan = save_scan(tmp_path / "scan.nii", with_air(np.full((64, 64, 4), 30.0)))
    checkpoint = sweep / "poolnet-fold0" / "checkpoints" / "epoch=0002.ckpt"
    capsys.readouterr()
    assert main(["predict", str(checkpoint), str(scan), "-o", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert summary["networks"] == ["my_lab.nets.PoolNet"]
    assert summary["checkpoints"] == [str(checkpoint)]


@pytest.mark.reliability(
    case="data.size the network cannot take",
    did="a network found only by its probe pass (pool once, upsample) with data.size=33",
    entry="python train.py experiment=tiny model=<outside YAML>",
)
def test_a_size_the_probed_network_cannot_take_is_one_line(outside, tmp_path, record_behaviour):
    lab, conf = outside
    args = _sweep_args(conf, "model=poolnet", "data.size=33")[1:]  # a single run
    proc = train(args, tmp_path, env={"PYTHONPATH": str(lab)}, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "data.size=33" in lines[0] and "multiple of 2" in lines[0], lines[0]
    assert "PoolNet" in lines[0]
    record_behaviour(f"exit 2: {lines[0]}")
