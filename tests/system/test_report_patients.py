"""A patient-split sweep's report scores the held-out patients on whole volumes, under the volume
protocol it is given, with the agreement of ichseg's and ABC/2's volumes with the true ones."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichseg.cli import main as ichseg_main
from ichseg.inference.volume_agreement import agreement
from ichseg.jobs.records import read_job
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
            assert (row["protocol"], row["nsd_tolerance_mm"]) == ("ichseg", "2.5")
        # The agreement the summary states, recomputed from the rows' columns.
        summary = json.loads((sweep / "report" / f"patients_{model}" / "summary.json").read_text())
        assert summary["precision"] == "fp32"
        bleeding = [r for r in rows if int(r["true_voxels"]) > 0]
        truth = [float(r["true_ml"]) for r in bleeding]
        for name, column in (("ichseg", "predicted_ml"), ("abc2_true", "abc2_true_ml")):
            expected = agreement(truth, [float(r[column]) for r in bleeding])
            found = summary["volume_agreement"][name]
            assert found["n"] == expected["n"] == len(bleeding)
            assert np.isclose(found["mae_ml"], expected["mae_ml"], rtol=1e-4)
            assert np.isclose(found["bias_ml"], expected["bias_ml"], rtol=1e-4, atol=1e-6)
        assert (sweep / "report" / f"patients_{model}" / "bland_altman.png").is_file()
        assert f"patients_{model}/bland_altman.png)" in report
    section = report.split("## Held-out patients, whole volumes")[1].split("\n## ")[0]
    assert "Scored with the `ichseg` volume metrics" in section and "NSD at 2.5 mm" in section
    assert "| HD95 (mm) (n) |" in section and "predicted in fp32" in section
    assert "| ABC/2 (true mask), the bedside estimate |" in section

    # Asked for INSTANCE 2022's definitions, the held-out patients are scored with them.
    other = tmp_path / "report-instance22"
    argv = ["report", str(sweep), "--volume-metrics", "instance22", "--out", str(other)]
    assert ichseg_main(argv) == 0, capsys.readouterr().err
    section = (other / "report.md").read_text().split("## Held-out patients, whole volumes")[1]
    assert "Scored with the `instance22` volume metrics" in section
    assert "NSD at 0.42 mm" in section and "| HD (mm) (n) |" in section
    with open(other / "patients_dunet" / "patients.csv") as fh:
        assert {r["protocol"] for r in csv.DictReader(fh)} == {"instance22"}
    # Without whole volumes to score, the option is refused, not ignored.
    argv = ["report", str(sweep), "--no-test", "--volume-metrics", "instance22"]
    argv += ["--out", str(tmp_path / "nothing")]
    assert ichseg_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == (
        "ichseg report: error: --volume-metrics scores whole volumes: it goes with the held-out "
        "test or --external, not with --no-test alone"
    )
    assert not (tmp_path / "nothing").exists()
