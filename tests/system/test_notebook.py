"""notebooks/walkthrough.ipynb runs headless on synthetic data and the tiny sweep."""

from __future__ import annotations

import json
import sys

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from ichseg.jobs.records import read_records
from tests.helpers.runs import ROOT

NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
KERNEL = "ichseg-test"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_runs_and_draws_both_figures(finished_sweep, tmp_path, monkeypatch):
    # A kernel spec of this interpreter, found first through JUPYTER_PATH: the kernel imports
    # the ichseg under test, whatever other `python3` kernels the machine has.
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("ICHSEG_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("ICHSEG_SWEEP", str(finished_sweep))
    monkeypatch.delenv("MPLBACKEND", raising=False)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2
    # The synthetic data went under ICHSEG_ROOT, not into the repository.
    assert (tmp_path / "root" / "data" / "phantom-p16-s128-seed0").is_dir()
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "20 jobs (20 done)" in text
    table = next(o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    lines = table.replace("**", "").replace(" †", "").splitlines()[2:]
    expected = [(model, epoch) for model in ("unet", "dunet") for epoch in (1, 2)]
    for line, (model, epoch) in zip(lines, expected, strict=True):
        values = [
            r["val"]["dice_paper"]
            for fold in range(10)
            for r in read_records(finished_sweep / f"{model}-fold{fold}")
            if r["epoch"] == epoch
        ]
        cell = f"{np.mean(values):.3f} ({np.std(values, ddof=1):.3f})"
        assert f"| {epoch} |" in line and f"| {cell} |" in line
