"""`ichseg predict`: CT volumes (NIfTI files, DICOM series) -> NIfTI hemorrhage masks + JSON
summaries; and what every inference command shares: the warning on collapsed checkpoints, a
progress bar.

Every input is checked (checkpoints loaded, scan headers read, output folder writable, what each
DICOM series' SEG needs) before the first scan is predicted, so a bad argument writes nothing. A
side output never costs a scan its mask and JSON: a series that cannot carry a valid SEG gets
them with one warning line, and the JSON says why it has no SEG.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichseg.arguments import output_dir
from ichseg.atomic import created_folders_removed_on_failure
from ichseg.checkpoint import CHECKPOINT_SUFFIXES, Checkpoint
from ichseg.errors import IchsegError
from ichseg.inference.outputs import (
    MASK_SUFFIX,
    check_outputs_free,
    checkpoint_ids,
    output_paths,
    png_path,
    seg_path,
    write_outputs,
)
from ichseg.inference.summary_page import png_bytes, summary_figure
from ichseg.inference.volumes import VolumeEnsemble, summarize
from ichseg.jobs.records import read_records
from ichseg.metrics import COLLAPSED, collapsed
from ichseg.runtime import pick_device
from ichseg.scans import Scan, open_scan
from ichseg.scans.scan import SegPlan


def split_paths(paths: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """Checkpoints (`.ckpt`, `.pt`, `.pth`) and scans (everything else), in the order given."""
    checkpoints = [Path(p) for p in paths if p.lower().endswith(CHECKPOINT_SUFFIXES)]
    scans = [Path(p) for p in paths if not p.lower().endswith(CHECKPOINT_SUFFIXES)]
    if not checkpoints:
        raise IchsegError(
            f"predict: expected at least one checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) "
            "before the scans, found none"
        )
    if not scans:
        raise IchsegError(
            "predict: expected at least one scan (.nii, .nii.gz, a DICOM folder or .zip), "
            "found none"
        )
    return checkpoints, scans


def _validation(ckpt: Checkpoint) -> dict | None:
    """The checkpoint's last validation: its own, or for older checkpoints the record of its job
    (`<job>/checkpoints/x.ckpt` -> `<job>/records.jsonl`) that names it."""
    if ckpt.validation is not None:
        return ckpt.validation
    job = ckpt.path.parent.parent
    try:
        records = read_records(job)
    except (IchsegError, OSError):
        return None  # no readable record to go by: nothing to warn about
    name = f"{ckpt.path.parent.name}/{ckpt.path.name}"
    return next((r for r in records if r.get("checkpoint") == name and "val" in r), None)


def warn_collapsed(checkpoints: Sequence[Checkpoint], command: str) -> None:
    """One warning line on stderr per checkpoint whose last validation says its network had
    collapsed (`ichseg.metrics.collapsed`): its empty masks are no finding."""
    for ckpt in checkpoints:
        validation = _validation(ckpt)
        if validation is not None and collapsed(validation["val"]):
            print(
                f"ichseg {command}: warning: checkpoint {ckpt.path}: its network had collapsed "
                f"at epoch {validation['epoch']} ({COLLAPSED}: lesion Dice 0); an empty mask it "
                "predicts does not mean there is no bleed",
                file=sys.stderr,
            )


@contextlib.contextmanager
def progress_bar(total: int, label: str, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr, drawn only on a terminal; yields the function that advances it."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not (enabled and console.is_terminal)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


def predict_scans(
    checkpoints: Sequence[str | os.PathLike],
    scans: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    *,
    flip: bool = False,
    batch_size: int = 16,
    device: str | None = None,
    precision: str = "auto",
    series: Sequence[str] = (),
    resample_tilt: bool = False,
    allow_unreadable: bool = False,
    png: bool = False,
    seg: bool = True,
    allow_non_hu: bool = False,
    on_scan: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Predict every scan (a NIfTI file, or a DICOM folder or zip: the one of `series` it holds,
    else its only CT series; a tilted one resampled if `resample_tilt`; its unreadable files
    left out if `allow_unreadable`) with
    the averaged checkpoints; write masks and summaries (with `png`, a one-page PNG too; for a
    DICOM series a SEG unless not `seg`) to `outdir`.

    Every scan's voxels are checked (`allow_non_hu`: not as CT in HU) before the first is
    predicted; a failure after that names the outputs already written.
    """
    target = pick_device(device)
    model = VolumeEnsemble.load(
        checkpoints, target, flip=flip, batch_size=batch_size, precision=precision
    )
    warn_collapsed(model.ensemble.checkpoints, "predict")
    opened = [open_scan(p, series, resample_tilt, allow_unreadable) for p in scans]
    # The DICOM series read, by SeriesInstanceUID.
    identities = [(s.input_identity().get("series_instance_uid"), s.path) for s in opened]
    read = {uid: path for uid, path in identities if uid is not None}
    unused = [uid for uid in series if uid not in read]
    if unused:
        found = "; ".join(f"{uid} from {path}" for uid, path in read.items()) or "none"
        raise IchsegError(
            f"--series {unused[0]}: no DICOM input holds that series (series read: {found})"
        )
    seen: dict[str, Path] = {}
    for scan in opened:
        if scan.stem in seen:
            raise IchsegError(
                f"scans {seen[scan.stem]} and {scan.path} would both write {scan.stem}{MASK_SUFFIX}"
            )
        seen[scan.stem] = scan.path
    # None: a scan that carries no SEG (a NIfTI input).
    plans = {s.stem: s.seg_plan(seg) for s in opened}
    earlier = check_outputs_free(
        Path(outdir), opened, lambda s: _extra_outputs(Path(outdir), s, png, plans[s.stem])
    )
    # Checked before anything is written. The first scan's voxels are kept for its prediction
    # (a single scan is read once, one volume is held); the others are read again in turn.
    first = opened[0].read_hu(allow_non_hu) if opened else None
    for scan in opened[1:]:
        scan.read_hu(allow_non_hu)
    for scan in opened:
        plan = plans[scan.stem]
        if plan is not None and plan.refused:
            _warn_no_seg(f"scan {scan.path}: no DICOM SEG, {plan.why_not}", png)
    # A run that fails before writing anything leaves no folder it made.
    with created_folders_removed_on_failure(outdir):
        out = output_dir(outdir, "output folder", create=True)
        # The SEG names the checkpoints by their contents: hashed once, for DICOM inputs only.
        ids = checkpoint_ids(checkpoints) if any(p is not None for p in plans.values()) else []
        summaries: list[dict] = []
        with progress_bar(len(opened), "scans", progress) as advance:
            for index, scan in enumerate(opened):
                try:
                    hu = first if index == 0 else scan.read_hu(allow_non_hu)
                    first = None
                    outputs = _Outputs(out, ids, png, plans[scan.stem], earlier[index])
                    summaries.append(_predict_one(model, scan, hu, outputs, allow_non_hu))
                except (IchsegError, OSError) as err:
                    raise IchsegError(
                        f"{err} ({_written_so_far(opened, summaries, out)})"
                    ) from None
                advance()
                if on_scan is not None:
                    on_scan(summaries[-1])
    return summaries


def _extra_outputs(outdir: Path, scan: Scan, png: bool, plan: SegPlan | None) -> list[Path]:
    """What a scan gets besides its mask and JSON: a DICOM series' SEG when one can be made
    (`plan`), the PNG if asked."""
    seg = [seg_path(outdir, scan)] if plan is not None and plan.why_not is None else []
    return seg + ([png_path(outdir, scan)] if png else [])


def _warn_no_seg(why: str, png: bool) -> None:
    """One warning line on stderr: a scan gets no SEG (`why` names it), its other outputs do."""
    kept = "mask, JSON and PNG" if png else "mask and JSON"
    print(f"ichseg predict: warning: {why}; its {kept} are written", file=sys.stderr)


def _written_so_far(scans: Sequence[Scan], summaries: Sequence[dict], out: Path) -> str:
    """Which outputs exist after the scan after `summaries` failed: every file of the scans
    before it, as their summaries name them."""
    done = len(summaries)
    where = f"stopped at scan {done + 1} of {len(scans)} ({scans[done].path.name})"
    if not done:
        return f"{where}; nothing was written to {out}"
    names = [
        Path(p).name
        for scan, summary in zip(scans, summaries, strict=False)
        for p in (
            *output_paths(out, scan),
            *(summary[k] for k in ("seg", "png") if summary.get(k)),
        )
    ]
    return f"{where}; written to {out}: {', '.join(names)}; not written: the rest"


@dataclass(frozen=True)
class _Outputs:
    """Where and how one scan's outputs are written: the folder, the checkpoints' ids for its
    SEG, whether a PNG is asked for, its SEG plan (None: it carries no SEG) and the summary of an
    earlier prediction of the same input (None: none)."""

    folder: Path
    checkpoint_ids: Sequence[str]
    png: bool
    seg_plan: SegPlan | None
    earlier: dict | None

    def stale(self, scan: Scan, written: Sequence[Path]) -> list[Path]:
        """The SEG and PNG the earlier prediction wrote that this one does not."""
        if self.earlier is None:
            return []
        named = {Path(str(self.earlier[k])).name for k in ("seg", "png") if self.earlier.get(k)}
        possible = (seg_path(self.folder, scan), png_path(self.folder, scan))
        return [p for p in possible if p.name in named and p not in written]


def _predict_one(
    model: VolumeEnsemble, scan: Scan, hu: np.ndarray, outputs: _Outputs, allow_non_hu: bool
) -> dict:
    """Predict one scan from its voxels `hu` (`Scan.read_hu`), write its mask (a DICOM series'
    SEG, the PNG if asked) and summary, return the summary."""
    out = outputs.folder
    start = time.perf_counter()
    # Sliced along the axial axis in the training orientation; the mask goes back to the scan's
    # own grid, and the summary's slice numbers count along its axial axis.
    turn = scan.orientation
    hu = turn.apply(hu)
    mask = model.predict(hu)
    ensemble = model.ensemble
    found = summarize(mask, turn.zooms(scan.zooms))
    summary = {
        "scan": str(scan.path),
        "input": scan.input_identity(),
        "mask": str(output_paths(out, scan)[0]),
        "shape": list(scan.shape),
        **scan.describe(found["slices_with_hemorrhage"]),
        **turn.describe(),
        **found,
        "checkpoints": [str(c.path) for c in ensemble.checkpoints],
        "networks": [c.net_config["_target_"] for c in ensemble.checkpoints],
        "preprocess": {
            "size": model.preprocess.size,
            "window_level": model.preprocess.level,
            "window_width": model.preprocess.width,
            "intensity": model.preprocess.intensity,
            "from": model.preprocess_source,
        },
        "flip_tta": ensemble.flip,
        "threshold": ensemble.threshold,
        "device": str(ensemble.device),
        "precision": ensemble.precision,
        "allow_non_hu": allow_non_hu,
    }
    extra = {}
    if outputs.png:
        summary["png"] = str(png_path(out, scan))
        window_hu = (model.preprocess.level, model.preprocess.width)
        zooms = turn.zooms(scan.zooms)
        page = summary_figure(hu, mask, zooms, summary, scan.title, window_hu)
        extra[png_path(out, scan)] = png_bytes(page)
    mask = turn.undo(mask)
    if (plan := outputs.seg_plan) is not None:
        summary["checkpoint_ids"] = list(outputs.checkpoint_ids)
        parameters = {
            "checkpoints": "; ".join(outputs.checkpoint_ids),
            "threshold": str(ensemble.threshold),
            "window": f"{model.preprocess.level:g}/{model.preprocess.width:g} HU",
            "flip_tta": str(ensemble.flip),
        }
        summary.update(_seg(scan, mask, parameters, plan, outputs, extra))
    summary["seconds"] = round(time.perf_counter() - start, 3)
    stale = outputs.stale(scan, list(extra))
    write_outputs(scan, mask, summary, out, extra, stale)
    return summary


def _seg(
    scan: Scan,
    mask: np.ndarray,
    parameters: dict,
    plan: SegPlan,
    outputs: _Outputs,
    extra: dict[Path, bytes],
) -> dict:
    """Build the SEG of a DICOM series into `extra` when its `plan` allows; what the summary says
    of it. A SEG that fails to build is warned about: the mask and JSON are written all the same."""
    if plan.why_not is not None:
        return {"seg": None, "seg_not_written": plan.why_not}
    path = seg_path(outputs.folder, scan)
    try:
        extra[path] = scan.seg_bytes(mask, parameters, plan)
    except IchsegError as err:
        _warn_no_seg(str(err), outputs.png)
        return {"seg": None, "seg_not_written": str(err)}
    return {"seg": str(path), **({"seg_filled": plan.filled} if plan.filled else {})}
