"""The `ichseg` command: phantom, prepare, predict, evaluate, report, dashboard, nnunet, bench.

Every subcommand turns a user error into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import copy
import errno
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ichseg.errors import IchsegError, first_line

if TYPE_CHECKING:
    from ichseg.data.sources import Source
    from ichseg.sweeps.model import Sweep


def _phantom(args: argparse.Namespace) -> None:
    from ichseg.data.phantom import ensure_phantom, is_phantom, phantom_params

    out = _output_dir(args.out, "OUT")
    params = {"patients": args.patients, "size": args.size, "seed": args.seed}
    if is_phantom(out, phantom_params(**params, layout=args.layout)):
        print(f"{out} already holds this synthetic release; nothing written")
        return
    start = time.perf_counter()
    ensure_phantom(out, **params, layout=args.layout)
    print(
        f"wrote synthetic release {out} ({args.layout} layout) in "
        f"{time.perf_counter() - start:.1f} s"
    )


def _prepare(args: argparse.Namespace) -> None:
    from ichseg.data.prepare import PrepareConfig, load_prepared, lost_to_resize_warning, prepare
    from ichseg.data.sources import source_named

    cfg = PrepareConfig(
        size=args.size,
        level=args.level,
        width=args.width,
        split=args.split,
        seed=args.seed,
        n_folds=args.n_folds,
        test_fraction=args.test_fraction,
    )
    out = _output_dir(args.out, "OUT")
    start = time.perf_counter()
    source = source_named(args.source, args.release, args.binary_labels)
    cache = prepare(source, out, cfg, allow_non_hu=args.allow_non_hu)
    built = time.perf_counter() - start
    start = time.perf_counter()
    data = load_prepared(cache)
    loaded = time.perf_counter() - start
    n_ich = int(data.has_ich.sum())
    print(
        f"{cache}: {len(data.ids)} slices ({n_ich} with hemorrhage), "
        f"{len(data.splits['test'])} test, {len(data.splits['folds'])} folds; "
        f"prepared in {built:.1f} s, loads in {loaded:.3f} s"
    )
    lost = lost_to_resize_warning(data.meta)
    if lost:
        print(f"ichseg prepare: warning: {cache}: {lost}", file=sys.stderr)


def _nnunet_export(args: argparse.Namespace) -> None:
    from ichseg.nnunet.export import export_dataset, next_commands
    from ichseg.nnunet.layout import ENV_PREPROCESSED, ENV_RAW, env_folder

    raw = Path(args.out) if args.out else env_folder(ENV_RAW)
    if raw is None:
        raise IchsegError(f"give OUT (the nnU-Net raw folder) or set {ENV_RAW}")
    preprocessed = Path(args.preprocessed) if args.preprocessed else env_folder(ENV_PREPROCESSED)
    done = export_dataset(args.source, raw, args.dataset_id, preprocessed)
    what = "wrote" if done.written else "already holds this export, nothing written:"
    print(
        f"{what} {done.dataset_dir}: {done.n_train} training slices in {done.n_folds} folds "
        f"({done.split_mode} split), {done.n_test} test slices in imagesTs"
    )
    if done.splits_at is not None:
        print(f"ichseg's folds are in {done.splits_at}")
    print("next, with nnU-Net v2 installed:")
    for line in next_commands(done):
        print(f"  {line}")


def _nnunet_import(args: argparse.Namespace) -> None:
    from ichseg.nnunet.results import import_results

    folds = None if args.folds is None else _fold_list(args.folds)
    written = import_results(args.results, args.sweep, folds)
    names = ", ".join(p.name for p in written)
    print(f"imported nnU-Net as {len(written)} job folders of {args.sweep}: {names}")
    print(f"next: ichseg report {args.sweep}")


def _fold_list(text: str) -> list[int]:
    """`--folds 0,3`'s fold numbers, or one line saying what was found instead."""
    parts = [part.strip() for part in text.split(",")]
    bad = next((part for part in parts if not part.isdigit()), None)
    if bad is not None:
        found = f"{bad!r} in {text!r}" if text.strip() else "nothing"
        raise IchsegError(
            f"--folds: expected comma-separated fold numbers such as 0,1, found {found}"
        )
    return [int(part) for part in parts]


# Set when a W&B request failed: wandb's exit hook then joins its service process, which may
# still wait on a silent server, so the console script leaves without running exit hooks.
_wandb_may_hang_at_exit = False


def _report(args: argparse.Namespace) -> int:
    from ichseg.report.build import build_report, report_dir
    from ichseg.report.compute import compute, score_heldout
    from ichseg.report.heldout_volumes import check_external_sources
    from ichseg.report.wandb_run import log_report_run
    from ichseg.sweeps import WITH_CHECKPOINTS, read_sweep
    from ichseg.sweeps.local import latest_sweep

    out = _output_dir(args.out, "--out") if args.out else None
    externals = _external_sources(args.external, args.binary_labels)
    if args.source != "wandb" and (args.project or args.group):
        raise IchsegError(f"--project and --group go with --source wandb, not {args.source}")
    if args.source == "wandb":
        if not args.project or not args.group:
            raise IchsegError("--source wandb needs --project entity/project and --group GROUP")
        if args.sweep:
            raise IchsegError(f"--source wandb reads no sweep folder, found {args.sweep!r}")
        # The group is `<experiment_name>/<sweep folder>`: where the local sweep would be.
        out = out or Path(args.experiments) / args.group / "report-wandb"
        sweep_dir = None
    else:
        sweep_dir = Path(args.sweep) if args.sweep else latest_sweep(Path(args.experiments))
        if args.source == "wandb-offline":
            out = out or sweep_dir / "report-wandb-offline"
    try:
        sweep = read_sweep(args.source, sweep_dir, args.project, args.group)
    except IchsegError:
        if args.source == "wandb":
            global _wandb_may_hang_at_exit
            _wandb_may_hang_at_exit = True
        raise
    for warning in sweep.warnings:
        print(f"ichseg report: warning: {warning}", file=sys.stderr)
    if args.binary_labels and not externals:
        raise IchsegError("--binary-labels goes with --external (the external sets' masks)")
    external = [source for _, source in externals]
    if external and args.source not in WITH_CHECKPOINTS:
        raise IchsegError(
            f"--external needs the sweep's checkpoints: --source local, not {args.source}"
        )
    if args.volume_metrics and args.source not in WITH_CHECKPOINTS:
        raise IchsegError(
            f"--volume-metrics needs the sweep's checkpoints: --source local, not {args.source}"
        )
    if args.volume_metrics and args.no_test and not external:
        raise IchsegError(
            "--volume-metrics scores whole volumes: it goes with the held-out test or "
            "--external, not with --no-test alone"
        )
    # Before anything is scored: no external set may hold the volumes the sweep trained on.
    check_external_sources(sweep, externals)
    results = compute(sweep, args.protocol)
    out = report_dir(sweep, out)
    with tempfile.TemporaryDirectory(prefix="ichseg-heldout-") as work:
        scored = args.source in WITH_CHECKPOINTS and (external or not args.no_test)
        test = not args.no_test
        heldout = (
            score_heldout(results, Path(work), external, test, args.volume_metrics)
            if scored
            else None
        )
        out = build_report(results, out, heldout)
    print(f"report written to {out}")
    if not args.no_wandb:
        # After the report is in place: W&B failing cannot lose it. --project and --group are
        # set only with --source wandb, whose jobs are runs of that project and group.
        log_report_run(results, heldout, out, args.project, args.group)
    return _incomplete(sweep)


def _dashboard(args: argparse.Namespace) -> None:
    from ichseg.dashboard.publish import check_spec_path, save_view, split_project, write_spec
    from ichseg.dashboard.runs import read_group
    from ichseg.dashboard.view import build_view, panel_keys
    from ichseg.sweeps.local import latest_sweep

    # Before the runs are read: a path that cannot take the spec is one line.
    if args.dry_run is not None:
        _output_dir(str(Path(args.dry_run).parent), "--dry-run")
        check_spec_path(Path(args.dry_run))
    sweep_dir = Path(args.sweep) if args.sweep else latest_sweep(Path(args.experiments))
    runs = read_group(sweep_dir, args.group)
    entity, project = split_project(args.project) if args.project else (runs.entity, runs.project)
    for skipped in runs.skipped:
        print(f"ichseg dashboard: warning: {skipped}", file=sys.stderr)
    view, notes = build_view(runs, entity, project)
    for note in notes:
        print(f"ichseg dashboard: {note}")
    panels = [panel for section in view.sections for panel in section.panels]
    keys = {key for panel in panels for key in panel_keys(panel)}
    where = f"{entity or '<your default entity>'}/{project}"
    what = (
        f"view {view.name!r} of {where}: {len(view.sections)} sections, {len(panels)} panels "
        f"naming {len(keys)} keys, each logged by the group's runs ({len(runs.jobs)} jobs"
        f"{', a report run' if runs.report is not None else ''})"
    )
    if args.dry_run is not None:
        about = {"sweep": str(sweep_dir.absolute()), "group": runs.group}
        write_spec(view, Path(args.dry_run), about)
        print(f"wrote the spec of {what} to {args.dry_run}; nothing was sent to W&B")
        return
    try:
        url = save_view(view)
    except IchsegError:
        global _wandb_may_hang_at_exit
        _wandb_may_hang_at_exit = True
        raise
    print(f"saved {what}: {url}")


def _external_sources(specs: list[str], binary_labels: bool) -> list[tuple[str, Source]]:
    """Each `SOURCE=DIR` of `ichseg report --external` as ("--external SOURCE=DIR", its data
    source), before the sweep is read: an unknown SOURCE is named with the valid ones, and a
    folder named twice (under any source name or spelling) would be scored, and shown, twice."""
    from ichseg.data.sources import source_named

    parsed: list[tuple[str, Source]] = []
    seen: dict[Path, str] = {}
    for spec in specs:
        name, sep, root = spec.partition("=")
        if not sep or not name or not root:
            raise IchsegError(f"--external {spec!r}: expected SOURCE=DIR, e.g. bhsd=/data/bhsd")
        folder = Path(root).resolve()
        if folder in seen:
            raise IchsegError(
                f"--external {spec!r}: {root} is already --external {seen[folder]!r}; "
                "give each external data set once"
            )
        seen[folder] = spec
        where = f"--external {name}={root}"
        parsed.append((where, source_named(name, root, binary_labels, where=where)))
    return parsed


# `ichseg report`'s exit status when the report was written but the sweep is not complete.
EXIT_INCOMPLETE = 3


def _incomplete(sweep: Sweep) -> int:
    """Say on stderr which jobs are not done yet; EXIT_INCOMPLETE if any, else 0."""
    jobs = [f"{j.name} ({j.status})" for j in sweep.unfinished]
    jobs += [f"{model}-fold{fold} (not started)" for model, fold in sweep.missing_jobs]
    if not jobs:
        return 0
    total = len(sweep.jobs) + len(sweep.missing_jobs)
    print(
        f"ichseg report: {sweep.root}: incomplete sweep, {len(jobs)} of {total} jobs not done: "
        f"{', '.join(jobs)}; the report covers the rest (exit status {EXIT_INCOMPLETE})",
        file=sys.stderr,
    )
    return EXIT_INCOMPLETE


def _predict(args: argparse.Namespace) -> None:
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
        **_inference_kwargs(args),
        on_scan=show,
    )
    print(
        f"{len(done)} scan(s), {len(checkpoints)} checkpoint(s) on {done[0]['device']} "
        f"({done[0]['precision']}) in {time.perf_counter() - start:.1f} s"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from ichseg.data.sources import source_named
    from ichseg.inference.evaluate import dataset_label, evaluate
    from ichseg.inference.volume_metrics import VOLUME_ESTIMATES, mean_text, volume_protocol

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
        **_inference_kwargs(args),
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


def _bench(args: argparse.Namespace) -> None:
    from ichseg.bench.run import run_bench
    from ichseg.bench.settings import BenchSettings
    from ichseg.bench.table import format_bench

    # Checked before anything is timed: a bench takes minutes to hours.
    _output_dir(args.out, "--out")
    settings = BenchSettings(
        experiments=args.experiments,
        models=args.models,
        sections=args.sections,
        device=args.device,
        repeats=args.repeats,
        warmup_steps=args.warmup_steps,
        warmup_s=args.warmup_s,
        window_s=args.window_s,
        monai_workers=args.monai_workers,
        jobs_per_device=args.jobs_per_device,
        overrides=args.override,
        predict_options=args.predict_option,
        out_dir=args.out,
    )
    result, path = run_bench(settings)
    print(format_bench(result))
    print(f"figures: {path}")


def _csv(kind: type = str):
    """An argparse type for comma-separated lists."""

    def parse(text: str) -> list:
        return [kind(part) for part in text.split(",") if part]

    return parse


def _output_dir(path: str, name: str) -> Path:
    """`path` as a folder that exists or can be created and written, or one line saying why not."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise IchsegError(f"{name} {out}: exists and is not a folder")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise IchsegError(f"{name} {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise IchsegError(f"{name} {out}: {existing} is not writable")
    return out


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows every option's default, also for options without a help text."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.default is not None:
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "%(default)" in action.help:
            return action.help
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `ichseg` command."""
    parser = argparse.ArgumentParser(
        prog="ichseg", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    from ichseg.data.phantom import LAYOUTS
    from ichseg.inference.volume_metrics import VOLUME_PROTOCOLS

    p = sub.add_parser(
        "phantom",
        help="write a synthetic release in the layout of a data source",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("out", help="folder to create")
    p.add_argument("--patients", type=int, default=75)
    p.add_argument("--size", type=int, default=512, help="in-plane pixels (real: 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=tuple(LAYOUTS), default="physionet", help="folder layout")
    p.set_defaults(func=_phantom)

    p = sub.add_parser(
        "prepare",
        help="window, resize, balance and split a release into a cache",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("release", help="release folder, in the layout of --source")
    p.add_argument(
        "--source",
        default="physionet",
        help="data source: a conf/data/<name>.yaml (physionet, instance22, bhsd, nnunet_raw, "
        "phantom) or a source class's import path",
    )
    p.add_argument("out", help="cache root; the cache goes to a subfolder named by its settings")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--level", type=float, default=40.0, help="window level (HU)")
    p.add_argument("--width", type=float, default=120.0, help="window width (HU)")
    p.add_argument("--split", choices=("slice", "patient"), default="slice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-folds", type=int, default=10, help="cross-validation folds")
    p.add_argument("--test-fraction", type=float, default=0.1, help="held out per class")
    _allow_non_hu_option(p)
    _binary_labels_option(p, "the release's")
    p.set_defaults(func=_prepare)

    p = sub.add_parser(
        "predict",
        help="segment whole CT scans (NIfTI, DICOM series) into mask NIfTIs (and DICOM SEG)",
        formatter_class=_HelpFormatter,
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
    _inference_options(p, precision="auto")
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "evaluate",
        help="3-D Dice, HD95, NSD, RVD, volume error, detection on held-out patients or on "
        "an external data source",
        formatter_class=_HelpFormatter,
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
    _binary_labels_option(p, "--root's")
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
    _inference_options(p, precision="fp32")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "report",
        help="Table 1, selection, test scores and figures of a sweep",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("sweep", nargs="?", help="sweep folder (default: the latest under experiments/)")
    p.add_argument("--experiments", default="experiments", help="where to look for the latest")
    p.add_argument(
        "--protocol", default="paper", help="selection protocol: paper, onebatch, lesion or pooled"
    )
    p.add_argument("--no-test", action="store_true", help="skip scoring the held-out test split")
    p.add_argument(
        "--source",
        choices=("local", "wandb", "wandb-offline"),
        default="local",
        help="read the sweep folder's records (local), the W&B API (wandb: --project, --group), "
        "or the sweep's W&B offline run files (wandb-offline)",
    )
    p.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="SOURCE=DIR",
        help="also score the selected checkpoints on every volume of another data source "
        "(e.g. bhsd=/data/bhsd; repeatable): an external validation section each",
    )
    _binary_labels_option(p, "the --external sets'")
    p.add_argument(
        "--volume-metrics",
        choices=tuple(VOLUME_PROTOCOLS),
        help="whole-volume scores of the held-out patients and --external sets (default: "
        "ichseg; an --external set whose challenge published its own, instance22, is scored "
        "with those)",
    )
    p.add_argument(
        "--no-wandb",
        action="store_true",
        help="log no report run to W&B (by default, when the sweep's jobs logged to W&B, the "
        "report is logged as a run of job type report in their group, offline unless "
        "WANDB_MODE=online)",
    )
    p.add_argument("--project", help="W&B entity/project (with --source wandb)")
    p.add_argument("--group", help="W&B run group, <experiment_name>/<sweep folder>")
    p.add_argument(
        "--out",
        help="report folder (default: SWEEP/report, SWEEP/report-wandb-offline, or "
        "EXPERIMENTS/GROUP/report-wandb)",
    )
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "dashboard",
        help="save the W&B workspace view of a sweep's group: checkpoints per protocol, curves, "
        "overlays, Table 1",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "sweep",
        nargs="?",
        help="sweep folder whose jobs logged to W&B (default: the latest under experiments/)",
    )
    p.add_argument("--experiments", default="experiments", help="where to look for the latest")
    p.add_argument(
        "--project",
        metavar="ENTITY/PROJECT",
        help="where to save the view (default: the project the jobs logged to, and your W&B "
        "default entity when they named none)",
    )
    p.add_argument(
        "--group",
        help="the W&B group to show (default: the group most of the sweep's jobs logged to, "
        "<experiment_name>/<sweep folder>)",
    )
    p.add_argument(
        "--dry-run",
        metavar="OUT.json",
        help="write the view's spec (wandb_workspaces' view model, as JSON) to OUT.json "
        "instead of saving it: no network, no credentials",
    )
    p.set_defaults(func=_dashboard)

    p = sub.add_parser(
        "nnunet",
        help="export a sweep's slices and folds to nnU-Net v2; import its predictions",
        formatter_class=_HelpFormatter,
    )
    nn = p.add_subparsers(dest="nnunet_command", required=True)
    q = nn.add_parser(
        "export",
        help="write DatasetNNN_ICH (imagesTr, labelsTr, imagesTs, splits_final.json)",
        formatter_class=_HelpFormatter,
    )
    q.add_argument("source", metavar="SWEEP_OR_CACHE", help="a sweep folder or a prepared cache")
    q.add_argument(
        "out", nargs="?", metavar="OUT", help="nnU-Net raw folder (default: $nnUNet_raw)"
    )
    q.add_argument("--dataset-id", type=int, required=True, help="nnU-Net dataset id, 1..999")
    q.add_argument(
        "--preprocessed",
        help="also put splits_final.json in PREPROCESSED/DatasetNNN_ICH (default: "
        "$nnUNet_preprocessed, when set)",
    )
    q.set_defaults(func=_nnunet_export)
    q = nn.add_parser(
        "import",
        help="score nnU-Net's fold predictions as the sweep's third architecture",
        formatter_class=_HelpFormatter,
    )
    q.add_argument(
        "results",
        metavar="NNUNET_RESULTS_FOLDER",
        help="$nnUNet_results/DatasetNNN_ICH or its <trainer>__<plans>__2d folder",
    )
    q.add_argument("sweep", metavar="SWEEP", help="the sweep the dataset was exported from")
    q.add_argument("--folds", help="comma-separated folds to import (default: the sweep's folds)")
    q.set_defaults(func=_nnunet_import)

    from ichseg.bench.settings import SECTIONS, BenchSettings

    d = BenchSettings()
    p = sub.add_parser(
        "bench",
        help="where training time goes: images/s, overheads, epochs",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--experiments", type=_csv(), default=d.experiments, help="e.g. demo,paper")
    p.add_argument("--models", type=_csv(), default=d.models, help="e.g. unet,dunet")
    p.add_argument(
        "--sections", type=_csv(), default=d.sections, help=f"some of {','.join(SECTIONS)}"
    )
    p.add_argument("--device", default=d.device, help="auto (the GPU when present), cpu or cuda")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed repetitions per figure")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--warmup-s", type=float, default=d.warmup_s, help="least warm-up seconds")
    p.add_argument("--window-s", type=float, default=d.window_s, help="seconds per repetition")
    p.add_argument("--monai-workers", type=int, default=d.monai_workers)
    p.add_argument("--jobs-per-device", type=_csv(int), default=d.jobs_per_device)
    p.add_argument(
        "--override",
        action="append",
        default=[],
        help="a Hydra override for every job config, e.g. data.batch_size=16 (repeatable)",
    )
    p.add_argument(
        "--predict-option",
        action="append",
        default=[],
        help="an option of the timed ichseg predict, e.g. --predict-option=--flip (repeatable)",
    )
    p.add_argument("--out", default=d.out_dir, help="folder of the JSON files")
    p.set_defaults(func=_bench)
    return parser


def _allow_non_hu_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-non-hu",
        action="store_true",
        help="go on with volumes that do not look like head CT in Hounsfield units (recorded)",
    )


def _binary_labels_option(p: argparse.ArgumentParser, whose: str) -> None:
    p.add_argument(
        "--binary-labels",
        action="store_true",
        help=f"{whose} masks are a binary (0/1) export of a layout whose label map names "
        "subtypes (bhsd, nnunet_raw): read every bleed without subtypes",
    )


def _inference_options(p: argparse.ArgumentParser, precision: str) -> None:
    """Options shared by predict and evaluate; `precision` is the command's default."""
    _allow_non_hu_option(p)
    p.add_argument("--flip", action="store_true", help="average with left-right mirrored input")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU when present)")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=precision,
        help="auto: bf16 where the GPU or CPU (AMX, AVX512-BF16) computes it natively, else fp32 "
        "(fp32: the same result on every machine)",
    )


def _inference_kwargs(args: argparse.Namespace) -> dict:
    """The shared inference options as keyword arguments."""
    keys = ("flip", "batch_size", "device", "precision", "allow_non_hu")
    return {key: getattr(args, key) for key in keys}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ichseg` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except IchsegError as exc:
        print(f"ichseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        # numpy names the array it could not allocate; a traceback adds nothing to that.
        print(f"ichseg {args.command}: error: out of memory: {first_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in _PATH_ERRORS:
            raise
        reason = exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))
        print(f"ichseg {args.command}: error: {exc.filename}: {reason}", file=sys.stderr)
        return 2


# Errors of a path the user gave (cannot be created, written or read): one line, not a traceback.
_PATH_ERRORS = (
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOENT,
    errno.ENAMETOOLONG,
)


def console() -> None:
    """The `ichseg` console script: `main`, then exit without hanging on a stuck W&B service."""
    code = main()
    if _wandb_may_hang_at_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
