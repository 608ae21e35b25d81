"""`ichseg report`: its arguments and entry point."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ichseg.arguments import add_command, binary_labels_option, note_wandb_failed, output_dir
from ichseg.errors import IchsegError
from ichseg.inference.volume_metrics import VOLUME_PROTOCOLS

if TYPE_CHECKING:
    from ichseg.data.sources import Source
    from ichseg.sweeps.model import Sweep

# `ichseg report`'s exit status when the report was written but the sweep is not complete.
EXIT_INCOMPLETE = 3


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `report` to the `ichseg` command."""
    p = add_command(
        commands, "report", help="Table 1, selection, test scores and figures of a sweep"
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
    binary_labels_option(p, "the --external sets'")
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
    p.set_defaults(func=report_entry)


def report_entry(args: argparse.Namespace) -> int:
    """`ichseg report`: write the report; EXIT_INCOMPLETE when the sweep is not complete."""
    from ichseg.report.build import build_report, report_dir
    from ichseg.report.compute import compute, score_heldout
    from ichseg.report.heldout_volumes import check_external_sources
    from ichseg.report.wandb_run import log_report_run
    from ichseg.sweeps import WITH_CHECKPOINTS, read_sweep
    from ichseg.sweeps.local import latest_sweep

    out = output_dir(args.out, "--out") if args.out else None
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
            note_wandb_failed()
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
