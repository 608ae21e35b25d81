"""`ichseg predict` and `ichseg evaluate`: their arguments and entry points."""

from __future__ import annotations

import argparse
import time

from ichseg.arguments import add_command, binary_labels_option, inference_kwargs, inference_options
from ichseg.errors import IchsegError
from ichseg.inference.volume_metrics import VOLUME_PROTOCOLS


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `predict` and `evaluate` to the `ichseg` command."""
    p = add_command(
        commands,
        "predict",
        help="segment whole CT scans (NIfTI, DICOM series) into mask NIfTIs (and DICOM SEG)",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="CKPT|SCAN",
        help="checkpoints (.ckpt, .pt, .pth; several are averaged) and scans (.nii, .nii.gz, "
        "or a DICOM series: a folder or .zip)",
    )
    p.add_argument("-o", "--out", required=True, help="output folder (created if missing)")
    p.add_argument(
        "--series",
        action="append",
        default=[],
        metavar="UID",
        help="the SeriesInstanceUID to read from a DICOM folder or zip holding several CT series "
        "(repeatable: each input uses the one it holds; every UID must be found)",
    )
    p.add_argument(
        "--resample-tilt",
        action="store_true",
        help="resample a DICOM series with gantry tilt onto an orthogonal grid instead of "
        "refusing it",
    )
    p.add_argument(
        "--allow-unreadable",
        action="store_true",
        help="read a DICOM series without its files that look like DICOM but cannot be read "
        "(cut short, damaged) instead of refusing it; the JSON lists them",
    )
    p.add_argument(
        "--png",
        action="store_true",
        help="also write OUT/<scan>_summary.png: the slices with bleed, the mask, the volume",
    )
    p.add_argument(
        "--no-seg",
        action="store_true",
        help="write no DICOM SEG for DICOM inputs (their mask and JSON only)",
    )
    inference_options(p, precision="auto")
    p.set_defaults(func=predict_entry)

    p = add_command(
        commands,
        "evaluate",
        help="3-D Dice, HD95, NSD, RVD, volume error, detection on held-out patients or on "
        "an external data source",
    )
    p.add_argument("checkpoints", nargs="+", help="checkpoints (several are averaged)")
    p.add_argument(
        "--splits",
        help="held-out patients: a patient-split prepared cache folder or its splits.json",
    )
    p.add_argument(
        "--release",
        help="with --splits: the cache's release folder, if it moved (default: as meta.json says)",
    )
    p.add_argument(
        "--source",
        help="external validation: the data source of --root (physionet, instance22, bhsd, "
        "nnunet_raw, phantom, or a source class's import path)",
    )
    p.add_argument("--root", help="external validation: the folder of --source")
    binary_labels_option(p, "--root's")
    p.add_argument(
        "--metrics",
        choices=tuple(VOLUME_PROTOCOLS),
        default="ichseg",
        help="whole-volume scores: ichseg (MONAI boundary voxels, HD95, signed RVD) or "
        "instance22 (the INSTANCE 2022 challenge's official evaluation: area-weighted surface "
        "elements, HD100, |RVD|, smoothed Dice)",
    )
    p.add_argument(
        "--nsd-tolerance-mm",
        type=float,
        help="NSD tolerance in mm (default: the protocol's, "
        + ", ".join(f"{n} {v.nsd_tolerance_mm:g}" for n, v in VOLUME_PROTOCOLS.items())
        + ")",
    )
    p.add_argument(
        "-o", "--out", required=True, help="folder for patients.csv, summary.json and the figures"
    )
    inference_options(p, precision="fp32")
    p.set_defaults(func=evaluate_entry)


def predict_entry(args: argparse.Namespace) -> None:
    """`ichseg predict`: one line per scan, then the run's totals."""
    from ichseg.inference.run import predict_scans, split_paths
    from ichseg.inference.slice_numbers import instance_numbers, slices_text

    checkpoints, scans = split_paths(args.paths)
    start = time.perf_counter()

    def show(summary: dict) -> None:
        hits = summary["slices_with_hemorrhage"]
        where = f" on {slices_text(hits, instance_numbers(summary))}" if hits else ""
        print(
            f"{summary['scan']}: {summary['bleed_volume_ml']:.2f} mL, "
            f"{summary['n_slices_with_hemorrhage']}/{summary['n_slices']} slices, "
            f"{summary['n_bleeds']} bleed(s){where} -> {summary['mask']}"
        )

    done = predict_scans(
        checkpoints,
        scans,
        args.out,
        series=args.series,
        resample_tilt=args.resample_tilt,
        allow_unreadable=args.allow_unreadable,
        png=args.png,
        seg=not args.no_seg,
        **inference_kwargs(args),
        on_scan=show,
    )
    print(
        f"{len(done)} scan(s), {len(checkpoints)} checkpoint(s) on {done[0]['device']} "
        f"({done[0]['precision']}) in {time.perf_counter() - start:.1f} s"
    )


def _check_evaluate_args(args: argparse.Namespace) -> None:
    """One line for options that do not go together."""
    if (args.splits is None) == (args.source is None):
        raise IchsegError(
            "give --splits CACHE (held-out patients) or --source NAME --root DIR (external "
            "validation), not both or neither"
        )
    if (args.source is None) != (args.root is None):
        raise IchsegError("--source and --root go together")
    if args.release is not None and args.splits is None:
        raise IchsegError("--release goes with --splits (the cache's release folder)")
    if args.binary_labels and args.source is None:
        raise IchsegError("--binary-labels goes with --source (an external set's masks)")


def evaluate_entry(args: argparse.Namespace) -> None:
    """`ichseg evaluate`: score the volumes, then print the means and the volume agreement."""
    from ichseg.data.sources import source_named
    from ichseg.inference.evaluate import dataset_label, evaluate
    from ichseg.inference.volume_metrics import VOLUME_ESTIMATES, mean_text, volume_protocol

    _check_evaluate_args(args)
    source = (
        None if args.source is None else source_named(args.source, args.root, args.binary_labels)
    )
    s = evaluate(
        args.checkpoints,
        args.out,
        splits=args.splits,
        source=source,
        release_root=args.release,
        metrics=args.metrics,
        nsd_tolerance_mm=args.nsd_tolerance_mm,
        **inference_kwargs(args),
    )

    def fmt(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    def sign(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.2f}"

    protocol = volume_protocol(args.metrics)
    at = f" at {s['nsd_tolerance_mm']:g} mm"
    scores = ", ".join(
        f"{label}{at * (key == 'nsd')} {mean_text(s, key)}" for key, label in protocol.scores
    )
    what = "test patients" if source is None else f"volumes of {dataset_label(s['source'])}"
    print(
        f"{s['n_patients']} {what} ({protocol.name} metrics, {s['precision']}; (n): the volumes "
        f"a mean is over): {scores}, "
        f"mean |volume error| {fmt(s['volume_abs_error_ml_mean'])} mL, patient sensitivity "
        f"{fmt(s['patient_sensitivity'])}, specificity {fmt(s['patient_specificity'])} "
        f"-> {args.out}"
    )
    agreement = s["volume_agreement"]
    estimates = "; ".join(
        f"{label} {fmt(a.get('mae_ml'), 2)} mL, {sign(a.get('bias_ml'))} "
        f"[{sign(a.get('loa_low_ml'))}, {sign(a.get('loa_high_ml'))}], "
        f"{fmt(a.get('ccc'))}"
        for a, label in ((agreement[name], label) for name, _, label, _ in VOLUME_ESTIMATES)
    )
    print(
        f"volume agreement with the true mL over {agreement['ichseg']['n']} volumes with a "
        f"bleed (MAE, bias [95% limits of agreement], Lin's CCC): {estimates}"
    )
