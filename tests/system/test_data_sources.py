"""train.py on every layout and on a source class written outside the package; a checkpoint
trained on one layout evaluated on another, never on its own training volumes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ichseg.data.phantom import write_phantom
from ichseg.data.release import read_json_object
from ichseg.data.sources import NnunetRaw
from ichseg.inference.volumes import VolumeEnsemble
from tests.helpers.runs import ROOT, TINY, train
from tests.unit.test_volume_metrics import reference_hd95, reference_nsd

PLUGIN = '''
"""A source in its own layout: scans/<case>.nii.gz and masks/<case>.nii.gz, binary masks."""
from dataclasses import dataclass
from typing import ClassVar

from ichseg.data.sources import MaskSource, nifti_stems, pair_cases


@dataclass(frozen=True)
class Flat(MaskSource):
    name: ClassVar[str] = "flat"
    title: ClassVar[str] = "a flat folder of scans and masks"
    citation: ClassVar[str] = "the tests"
    licence: ClassVar[str] = "synthetic"

    def find_cases(self, root):
        return pair_cases(nifti_stems(root / "scans"), nifti_stems(root / "masks"), root)
'''

YAML = """
defaults:
  - /datamodule@_here_
  - _self_

source:
  _target_: flat_source.Flat
  root: ???
"""


def _train(root: Path, sweep: Path, *extra: str, env: dict | None = None):
    args = [*TINY, "model=dunet", f"hydra.sweep.dir={sweep}", *extra]
    return train(args, root, env={"WANDB_MODE": "disabled", **(env or {})})


def _job(sweep: Path) -> tuple[dict, Path]:
    """The job's cache meta and its last checkpoint."""
    job = sweep / "dunet-fold1"
    state = json.loads((job / "job.json").read_text())
    meta = read_json_object(Path(state["cache_dir"]) / "meta.json")
    return meta, job / "checkpoints" / "epoch=0002.ckpt"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """Synthetic releases; the nnU-Net one of other heads (seed 1), external to the others."""
    root = tmp_path_factory.mktemp("layouts")
    return {
        name: write_phantom(root / name, patients=16, size=64, seed=seed, layout=name)
        for name, seed in (("instance22", 0), ("bhsd", 0), ("nnunet_raw", 1))
    }


@pytest.fixture(scope="module")
def bhsd_sweep(layouts, tmp_path_factory) -> Path:
    """A tiny sweep trained on the BHSD-layout release."""
    root = tmp_path_factory.mktemp("bhsd_sweep")
    sweep = root / "sweep"
    done = _train(root, sweep, "data=bhsd", f"data.source.root={layouts['bhsd']}")
    assert done.returncode == 0, done.stderr[-2000:]
    return sweep


@pytest.mark.parametrize("layout", ["instance22", "bhsd", "nnunet_raw"])
def test_train_on_each_layout(layouts, tmp_path, layout):
    sweep = tmp_path / "sweep"
    done = _train(tmp_path, sweep, f"data={layout}", f"data.source.root={layouts[layout]}")
    assert done.returncode == 0, done.stderr[-2000:]
    meta, ckpt = _job(sweep)
    assert meta["source"] == layout and meta["source_facts"]["volumes"] == 16
    assert ckpt.is_file()


def test_a_source_class_outside_the_package_trains_with_one_yaml(layouts, tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "flat_source.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "flat.yaml").write_text(YAML)
    data = tmp_path / "flat"
    shutil.copytree(layouts["instance22"] / "train" / "data", data / "scans")
    shutil.copytree(layouts["instance22"] / "train" / "label", data / "masks")
    sweep = tmp_path / "sweep"
    done = _train(
        tmp_path,
        sweep,
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "data=flat",
        f"data.source.root={data}",
        env={"PYTHONPATH": f"{tmp_path / 'code'}{os.pathsep}{ROOT}"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    meta, _ = _job(sweep)
    assert meta["source"] == "flat"
    record = {"target": "flat_source.Flat", "root": str(data), "binary_labels": False}
    assert meta["source_facts"]["record"] == record


def test_a_checkpoint_of_one_layout_evaluated_on_another(layouts, bhsd_sweep, tmp_path):
    sweep = bhsd_sweep
    _, ckpt = _job(sweep)
    out = tmp_path / "eval"
    argv = ["evaluate", str(ckpt), "--source", "nnunet_raw", "--root", str(layouts["nnunet_raw"])]
    run = subprocess.run(
        [sys.executable, "-m", "ichseg.cli", *argv, "-o", str(out), "--precision", "fp32"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    release = NnunetRaw(str(layouts["nnunet_raw"])).open()
    model = VolumeEnsemble.load([ckpt], torch.device("cpu"), precision="fp32")
    with open(out / "patients.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16
    for row, patient in zip(rows, release.patients, strict=True):
        volume = release.load_patient(patient)
        pred, truth = model.predict(volume.hu), volume.mask
        total = pred.sum() + truth.sum()
        dice = 2 * np.sum(pred & truth) / total if total else float("nan")
        assert (
            row["dice_3d"] == "nan" if np.isnan(dice) else np.isclose(float(row["dice_3d"]), dice)
        )
        if pred.any() and truth.any():
            assert np.isclose(float(row["hd95_mm"]), reference_hd95(pred, truth, volume.zooms))
            tol = json.loads((out / "summary.json").read_text())["nsd_tolerance_mm"]
            assert np.isclose(float(row["nsd"]), reference_nsd(pred, truth, volume.zooms, tol))
    report = tmp_path / "report"
    # INSTANCE 2022 volumes of other heads (seed 2): scored with its challenge's definitions.
    instance22 = write_phantom(
        tmp_path / "instance22", patients=6, size=64, seed=2, layout="instance22"
    )
    args = ["report", str(sweep), "--no-test", "--out", str(report)]
    args += ["--external", f"nnunet_raw={layouts['nnunet_raw']}"]
    args += ["--external", f"instance22={instance22}"]
    run = subprocess.run(
        [sys.executable, "-m", "ichseg.cli", *args], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-2000:]
    text = (report / "report.md").read_text()
    section = text.split("## External validation: nnU-Net v2 raw dataset")[1].split("\n## ")[0]
    summary = json.loads((report / "external0_nnunet_raw_dunet" / "summary.json").read_text())
    assert summary["mode"] == "external" and summary["n_patients"] == 16
    assert f"| {summary['dice_3d_mean']:.3f} ({summary['dice_3d_defined_for']}) |" in section
    assert "16 volumes" in section and "synthetic phantom in this layout" in section
    assert "Scored with the `ichseg` volume metrics" in section and "NSD at 2.5 mm" in section
    section = text.split("## External validation: INSTANCE 2022")[1].split("\n## ")[0]
    assert "Scored with INSTANCE 2022's official definitions" in section
    assert "NSD at 0.42 mm" in section and "| HD (mm) (n) |" in section
    summary = json.loads((report / "external1_instance22_dunet" / "summary.json").read_text())
    assert summary["volume_protocol"]["name"] == "instance22"
    mean, infinite = summary["hd_mm_mean"], summary["hd_mm_infinite"]
    hd = "NA" if mean is None else f"{mean:.1f}"
    counts = f"{summary['hd_mm_defined_for']}{f'; {infinite} inf' if infinite else ''}"
    assert f"| {hd} ({counts}) |" in section  # infinite distances left out, counted
    assert "external1_instance22_dunet/bland_altman.png)" in section
    assert "External validation data: nnU-Net v2 raw dataset" in text  # provenance
    assert "Training data: BHSD" in text


def _ichseg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ichseg.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


@pytest.mark.reliability(
    case="external validation on the training release, after train.py",
    did="a sweep trained on a BHSD release; ichseg evaluate on that folder, ichseg report "
    "--external on a copy of it and on its heads in the nnU-Net layout",
    entry="ichseg evaluate --source --root, ichseg report --external",
)
def test_the_training_release_is_never_scored_as_external(
    layouts, bhsd_sweep, tmp_path, record_behaviour
):
    meta, ckpt = _job(bhsd_sweep)
    release = layouts["bhsd"]
    out = tmp_path / "eval"
    run = _ichseg("evaluate", str(ckpt), "--source", "bhsd", "--root", str(release), "-o", str(out))
    err = run.stderr.strip()
    assert run.returncode == 2 and len(err.splitlines()) == 1, err
    cache = json.loads((bhsd_sweep / "dunet-fold1" / "job.json").read_text())["cache_dir"]
    assert err.startswith(
        f"ichseg evaluate: error: {release}: is the release the checkpoints were trained on "
        f"(prepared cache {cache}, made from {meta['release_root']}): all its 16 volumes"
    ), err
    assert not out.exists()

    copy = shutil.copytree(release, tmp_path / "copy")
    same_heads = write_phantom(tmp_path / "nn", patients=16, size=64, layout="nnunet_raw")
    report = tmp_path / "report"
    for spec, found in (
        (f"bhsd={copy}", "a copy, all its 16 volumes"),
        (f"nnunet_raw={same_heads}", "16 of its 16 volumes (ICH_001, ICH_002,"),
    ):
        run = _ichseg("report", str(bhsd_sweep), "--out", str(report), "--external", spec)
        err = run.stderr.strip()
        assert run.returncode == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"ichseg report: error: --external {spec}: "), err
        assert found in err and f"prepared cache {cache}" in err, err
        assert not report.exists()
    record_behaviour(f"exit 2, nothing written, e.g.: {err}")
