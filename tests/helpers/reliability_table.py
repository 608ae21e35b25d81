"""The reliability table (docs/reliability.md), as a pytest plugin.

Tests marked `reliability` report what a user saw (the one-line error, the outcome) through
the `record_behaviour` fixture. `pytest -m reliability --reliability-table docs/reliability.md`
writes every recorded row as a Markdown table, so the table says what the tests observed.
tests/conftest.py registers this plugin.
"""

from __future__ import annotations

import pytest

# The cases, by section and in order: a case no test recorded shows as a gap.
RELIABILITY_CASES = {
    "Bad input": (
        "truncated NIfTI",
        "2D volume",
        "4D volume",
        "scan and mask of different shapes",
        "CSV with a missing column",
        "CSV with a missing patient",
        "CSV with duplicated rows",
        "CSV slice count disagrees with the volume",
        "mask disagrees with the CSV",
        "NaN voxels",
        "inf voxels",
        "empty release folder",
        "non-existent release folder",
        "unreadable file",
        "fold outside 0-9",
        "fold not an integer",
        "unknown model=",
        "checkpoint of the other architecture",
        "checkpoint from an older config",
        "sweep directory of another experiment",
        "report over a sweep with no finished job",
    ),
    "Faults": (
        "SIGKILL mid-epoch, sweep re-run",
        "SIGTERM (pre-emption)",
        "twenty processes prepare one cache",
        "disk full while writing the cache",
        "disk full while writing a checkpoint",
        "disk full while writing records",
        "report reads records while a job writes them",
    ),
    "Orientation": (
        "scan whose last axis is coronal",
        "release volume whose last axis is not axial",
        "affine with no clear axial axis",
    ),
    "Data sources": (
        "folder of another layout",
        "mask-labelled volume whose axial axis is stored first",
        "external validation on another layout",
        "phantom folder of other parameters",
        "phantom into a user's folder",
        "unknown data source name",
    ),
    "DICOM input": (
        "DICOM series and its NIfTI",
        "DICOM series of another modality",
        "DICOM series of mixed image sizes",
        "DICOM series of mixed orientations",
        "DICOM series with a missing slice",
        "DICOM series with gantry tilt",
        "DICOM series with gantry tilt, --resample-tilt",
        "DICOM series compressed beyond the installed handlers",
        "DICOM series of a single slice",
        "empty DICOM folder",
        "folder without DICOM images",
        "folder of several CT series without --series",
        "DICOM SEG of a prediction",
        "DICOM series with files cut short",
        "DICOM series with unreadable files, --allow-unreadable",
        "DICOM series with a damaged file in the middle",
        "every file of a DICOM input accounted for",
        "axial DICOM series of any ImageType",
        "non-axial DICOM series typed AXIAL",
        "CT series written by GDCM/ITK (RescaleType US)",
        "enhanced multi-frame CT",
        "DICOM files without preamble",
        "a single DICOM file or DICOMDIR as SCAN",
        "DICOM folder given as . or .. or with a trailing slash",
    ),
    "Networks": (
        "data.size the network cannot take",
        "model.width no network's filters can take",
        "_target_ that cannot be imported",
        "network output of another shape",
    ),
    "Reproducibility": (
        "same seed: identical splits",
        "same seed and config: identical records",
        "every job records seed, config, code and package versions",
    ),
    "Plausible wrong answers": (
        "two sweeps train one job folder at once",
        "single run into a folder another process trains",
        "second sweep of another command into one folder",
        "sweep dir is a file",
        "sweep dir under a file",
        "refused single run leaves nothing",
        "renamed key",
        "unknown key",
        "library warnings of a sweep",
        "HU+1024 without its intercept",
        "HU+1024 in float, no intercept",
        "scan x1e30",
        "scan x1000",
        "0/1 mask given as the scan",
        "intensities scaled to 0..1",
        "8-bit picture",
        "complex-valued scan",
        "--allow-non-hu goes on, recorded",
        "release scan stored as HU+1024",
        "held-out scan stored as HU+1024",
        "instance22 scan stored as HU+1024",
        "bhsd scan stored as HU+1024",
        "nnunet_raw scan stored as HU+1024",
        "size of the axial slices, not of the stored axes",
        "hemorrhage slices whose bleed the resize empties",
        "failure mid-way through several scans",
        "scan (1, 1, 1)",
        "scan (1, 1, 3)",
        "scan (2, 2, 1)",
        "scan (64, 1, 4)",
        "scan (1, 48, 2)",
        "scan (15, 64, 3)",
        "network collapsed by a far too high learning rate",
        "selected epoch of a network that did not learn",
        "W&B offline report of a killed job's truncated run file",
        "second export of another cache, same --dataset-id",
        "folds of two nnU-Net trainers into one sweep",
        "3d_fullres results",
        "3d_lowres results",
        "--folds ''",
        "--folds 'a,b'",
        "--folds '0,,1'",
        "--folds '-1'",
    ),
    "W&B": (
        "report of a sweep logged without W&B",
        "W&B fails while the report run is logged",
        "dashboard panel naming a key no run logged",
        "dashboard without W&B credentials or server",
        "--dry-run onto a file ichseg did not write",
    ),
}
_ROWS = pytest.StashKey[list]()
_OUTCOME = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-table",
        metavar="PATH",
        default=None,
        help="write the behaviour recorded by tests marked `reliability` to PATH (Markdown)",
    )


@pytest.fixture
def record_behaviour(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Record what the user observed: `record_behaviour(text, case=..., did=..., entry=...)`.

    `case`, `did` and `entry` default to the test's `reliability` marker; temporary paths
    become `<tmp>` so the table does not change from run to run.
    """
    marker = request.node.get_closest_marker("reliability")
    defaults = dict(marker.kwargs) if marker else {}
    base = str(tmp_path_factory.getbasetemp())
    repo = f"{request.config.rootpath}/"

    def record(text: str, case: str | None = None, did: str = "", entry: str | None = None):
        row = {
            "case": case or defaults.get("case", request.node.name),
            "did": did or defaults.get("did", ""),
            "entry": entry or defaults.get("entry", ""),
            "behaviour": " ".join(str(text).split()).replace(base, "<tmp>").replace(repo, ""),
            "test": request.node.nodeid,
            "item": request.node,
        }
        request.config.stash.setdefault(_ROWS, []).append(row)

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple):
        item.stash[_OUTCOME] = "skipped: " + report.longrepr[2].removeprefix("Skipped: ")
    elif report.failed:
        item.stash[_OUTCOME] = f"failed in {report.when}"
    elif report.when == "call":
        item.stash[_OUTCOME] = "passed"
    return report


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[dict], cases: tuple[str, ...]) -> list[str]:
    lines = [
        "| case | what the test did | entry point | observed behaviour | test |",
        "|---|---|---|---|---|",
    ]
    for case in cases:
        found = [row for row in rows if row["case"] == case]
        if not found:
            lines.append(f"| {_cell(case)} | | | **not covered by any test that ran** | |")
        for row in found:
            outcome = row["item"].stash.get(_OUTCOME, "not run")
            behaviour = row["behaviour"]
            if outcome != "passed":
                behaviour = f"**{outcome}**: {behaviour}"
            cells = (case, row["did"], row["entry"], behaviour, f"`{row['test']}`")
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--reliability-table")
    # A run that collected without running (--collect-only) would write a table of gaps.
    if not path or session.config.option.collectonly:
        return
    from ichseg.atomic import atomic_write_text

    rows = session.config.stash.setdefault(_ROWS, [])
    # Marked tests that recorded nothing (skipped, or failed before recording) still get a row.
    recorded = {id(row["item"]) for row in rows}
    for item in session.items:
        marker = item.get_closest_marker("reliability")
        if marker and "case" in marker.kwargs and id(item) not in recorded:
            row = {"did": "", "entry": "", **marker.kwargs, "behaviour": "(nothing recorded)"}
            rows.append({**row, "test": item.nodeid, "item": item})
    known = {case for cases in RELIABILITY_CASES.values() for case in cases}
    other = tuple(dict.fromkeys(row["case"] for row in rows if row["case"] not in known))
    out = [
        "# Reliability: observed behaviour",
        "",
        "Generated by the tests, not typed by hand: "
        "`pytest -m reliability --reliability-table docs/reliability.md`.",
        "Each row is what a test saw through the user's entry point (`<tmp>` is the test's "
        "temporary folder). Tests run on CPU.",
    ]
    for title, cases in {**RELIABILITY_CASES, "Other cases": other}.items():
        if cases:
            out += ["", f"## {title}", "", *_table(rows, cases)]
    atomic_write_text(path, "\n".join(out) + "\n")
