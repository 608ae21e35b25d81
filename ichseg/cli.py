"""The `ichseg` command: phantom, prepare, predict, evaluate, report, dashboard, nnunet, bench.

Every subcommand turns a user error into one line on stderr and exit status 2. Each stage
declares its subcommands (arguments and entry point) in its own `commands.py`; this module
assembles them.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from ichseg.arguments import HelpFormatter, wandb_may_hang_at_exit
from ichseg.bench import commands as bench_commands
from ichseg.dashboard import commands as dashboard_commands
from ichseg.data import commands as data_commands
from ichseg.errors import IchsegError, first_line
from ichseg.inference import commands as inference_commands
from ichseg.nnunet import commands as nnunet_commands
from ichseg.report import commands as report_commands

# Each stage's commands, in the order `ichseg --help` lists them.
STAGE_COMMANDS = (
    data_commands,
    inference_commands,
    report_commands,
    dashboard_commands,
    nnunet_commands,
    bench_commands,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `ichseg` command."""
    parser = argparse.ArgumentParser(
        prog="ichseg", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for stage in STAGE_COMMANDS:
        stage.add_commands(commands)
    return parser


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
    if wandb_may_hang_at_exit():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
