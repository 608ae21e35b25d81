"""`ichseg dashboard`: its arguments and entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ichseg.arguments import add_command, note_wandb_failed, output_dir
from ichseg.errors import IchsegError


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `dashboard` to the `ichseg` command."""
    p = add_command(
        commands,
        "dashboard",
        help="save the W&B workspace view of a sweep's group: checkpoints per protocol, curves, "
        "overlays, Table 1",
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
    p.set_defaults(func=dashboard_entry)


def dashboard_entry(args: argparse.Namespace) -> None:
    """`ichseg dashboard`: build the view, then write its spec or save it to W&B."""
    from ichseg.dashboard.publish import check_spec_path, save_view, split_project, write_spec
    from ichseg.dashboard.runs import read_group
    from ichseg.dashboard.view import build_view, panel_keys
    from ichseg.sweeps.local import latest_sweep

    # Before the runs are read: a path that cannot take the spec is one line.
    if args.dry_run is not None:
        output_dir(str(Path(args.dry_run).parent), "--dry-run")
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
        note_wandb_failed()
        raise
    print(f"saved {what}: {url}")
