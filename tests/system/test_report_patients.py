"""A patient-split sweep's report scores the held-out patients on whole volumes."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichseg.cli import main as ichseg_main
from ichseg.records import read_job
from tests.helpers.runs import train

pytestmark = pytest.mark.slow


def test_patient_split_report_scores_whole_held_out_volumes(tmp_path, capsys):
    sweep = tmp_path / "experiments" / "patients"
    args = ["-m", "model=unet,dunet", "fold=0,1,2", "experiment=tiny", "data.split=patient"]
    args += ["data.n_folds=3", "phantom.patients=24", "logger=none"]
    args += [f"hydra.sweep.dir={sweep}"]
    result = train(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    assert ichseg_main(["report", str(sweep)]) == 0, capsys.readouterr().err
    report = (sweep / "report" / "report.md").read_text()
    assert "## Held-out patients, whole volumes" in report

    cache = Path(read_job(sweep / "dunet-fold0")["cache_dir"])
    splits = json.loads((cache / "splits.json").read_text())
    test_patients = sorted({int(sid.split("_")[0]) for sid in splits["test"]})
    release = Path(json.loads((cache / "meta.json").read_text())["release_root"])
    for model in ("unet", "dunet"):
        with open(sweep / "report" / f"patients_{model}" / "patients.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert sorted(int(r["patient"]) for r in rows) == test_patients
        for row in rows:
            # True bleed voxels straight from the release's mask file, independently of ichseg.
            path = release / "masks" / f"{int(row['patient']):03d}.nii"
            mask = np.asanyarray(nib.load(path).dataobj)
            assert int(row["true_voxels"]) == int((mask > 0).sum())
            dice = float(row["dice_3d"])
            assert np.isnan(dice) or 0.0 <= dice <= 1.0
