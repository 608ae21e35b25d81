"""What `ichseg predict` writes for a scan, and when it may replace what is there.

Each scan gets `<stem>_mask.nii.gz` (the NIfTI mask, `ichseg.scans.nifti.mask_image`) and
`<stem>.json` (its summary), and as asked a one-page PNG and a DICOM SEG; all are written
atomically. The summary records its input (`Scan.input_identity`: the resolved path, and a DICOM
series' UID), and a file of the same name is replaced only when it is an earlier prediction of
that same input: inputs of one name in different folders (PACS exports name every folder
`DICOM`) never replace each other's outputs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ichseg.atomic import atomic_path
from ichseg.errors import IchsegError, first_line
from ichseg.scans.nifti import mask_image
from ichseg.scans.scan import Scan

MASK_SUFFIX = "_mask.nii.gz"
SEG_SUFFIX = "_seg.dcm"
PNG_SUFFIX = "_summary.png"


def output_paths(outdir: Path, scan: Scan) -> tuple[Path, Path]:
    """Where the mask and the JSON summary of `scan` go."""
    return outdir / f"{scan.stem}{MASK_SUFFIX}", outdir / f"{scan.stem}.json"


def seg_path(outdir: Path, scan: Scan) -> Path:
    """Where the DICOM SEG of `scan` goes."""
    return outdir / f"{scan.stem}{SEG_SUFFIX}"


def png_path(outdir: Path, scan: Scan) -> Path:
    """Where the one-page PNG of `scan` goes."""
    return outdir / f"{scan.stem}{PNG_SUFFIX}"


def checkpoint_ids(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Each checkpoint as `name sha256:<first 16 hex digits of the file's SHA-256>`."""
    ids = []
    for path in map(Path, paths):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
        ids.append(f"{path.name} sha256:{digest.hexdigest()[:16]}")
    return ids


def _recorded_input(summary: dict) -> dict:
    """The input an earlier summary was made from; one written before summaries recorded it
    gives its `scan` path (as it was typed, resolved from here) and its series UID."""
    recorded = summary.get("input")
    if isinstance(recorded, dict):
        return recorded
    legacy = {"path": str(Path(str(summary.get("scan", ""))).resolve())}
    dicom = summary.get("dicom")
    if isinstance(dicom, dict) and "series_instance_uid" in dicom:
        legacy["series_instance_uid"] = str(dicom["series_instance_uid"])
    return legacy


def _describe_input(identity: dict) -> str:
    """An input in a message: its path, and its series UID when it is a DICOM series."""
    uid = identity.get("series_instance_uid")
    return f"{identity.get('path')}" + (
        f" (series {uid or 'without a UID'})" if uid is not None else ""
    )


def _earlier_prediction(json_path: Path, mask_path: Path) -> dict | None:
    """The summary at `json_path` when it is one `ichseg predict` wrote next to `mask_path`."""
    try:
        summary = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(summary, dict) and Path(str(summary.get("mask", ""))).name == mask_path.name:
        return summary
    return None


def check_outputs_free(
    outdir: Path, scans: Sequence[Scan], extra: Callable[[Scan], Sequence[Path]] = lambda _: ()
) -> list[dict | None]:
    """Raise unless every output path (the mask, the JSON and the `extra` outputs of each scan)
    is free or holds an earlier prediction of the same input: a file the user put there (a mask
    of their own, say), or the outputs of another input of the same name, are never replaced.
    Returns each scan's earlier summary (None where there is none)."""
    earlier: list[dict | None] = []
    for scan in scans:
        mask_path, json_path = output_paths(outdir, scan)
        outputs = (mask_path, json_path, *extra(scan))
        taken = [p for p in outputs if p.exists() or p.is_symlink()]
        summary = _earlier_prediction(json_path, mask_path) if taken else None
        if taken and summary is None:
            raise IchsegError(
                f"{taken[0]}: exists and is not an earlier ichseg predict output (no "
                f"{json_path.name} naming {mask_path.name}); choose another -o or remove it"
            )
        if summary is not None and _recorded_input(summary) != scan.input_identity():
            raise IchsegError(
                f"{json_path}: holds the prediction of {_describe_input(_recorded_input(summary))}"
                f", not of {_describe_input(scan.input_identity())}; outputs are named after the "
                f"scan's file or folder name ({scan.stem}), so give this scan another -o folder"
            )
        earlier.append(summary)
    return earlier


def write_outputs(
    scan: Scan,
    mask: np.ndarray,
    summary: dict,
    outdir: Path,
    extra: Mapping[Path, bytes] | None = None,
    stale: Sequence[Path] = (),
) -> tuple[Path, Path]:
    """Write `<stem>_mask.nii.gz`, the `extra` files, then `<stem>.json`, each atomically; then
    remove `stale`, the files an earlier prediction of this input wrote that this one does not
    (so that no earlier SEG or PNG reads as this prediction's)."""
    mask_path, json_path = output_paths(outdir, scan)
    # mtime=0: the same mask gives the same bytes.
    blob = gzip.compress(mask_image(scan, mask).to_bytes(), compresslevel=1, mtime=0)
    try:
        for path, data in {mask_path: blob, **(extra or {})}.items():
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        for path in stale:
            path.unlink(missing_ok=True)
    except OSError as err:
        raise IchsegError(f"output folder {outdir}: cannot write ({first_line(err)})") from None
    return mask_path, json_path
