"""What every `ichseg` command's arguments share: the help formatter, the output folder check
(also of train.py's hydra.sweep.dir), the CSV list type, the options of the inference commands,
and how the console script leaves after W&B failed.

Stage packages import this module to declare their commands (`<stage>/commands.py`); it imports
no stage.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

from ichseg.atomic import atomic_path, created_folders_removed_on_failure
from ichseg.errors import IchsegError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
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


def add_command(
    commands: argparse._SubParsersAction, name: str, help: str
) -> argparse.ArgumentParser:
    """A new (sub)command `name` of `commands`, with `help` and the help formatter."""
    return commands.add_parser(name, help=help, formatter_class=HelpFormatter)


def output_dir(path: str | os.PathLike, label: str, *, create: bool = False) -> Path:
    """`path` as a folder that exists or can be created and written, or one line naming `label`
    and why not. With `create`, the folder is made and a file written there on trial; a folder
    made for a trial that failed is removed."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise IchsegError(f"{label} {out}: exists and is not a folder")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise IchsegError(f"{label} {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise IchsegError(f"{label} {out}: {existing} is not writable")
    if create:
        probe = out / ".ichseg-write-test"
        try:
            with created_folders_removed_on_failure(out):
                out.mkdir(parents=True, exist_ok=True)
                with atomic_path(probe) as tmp:
                    tmp.write_bytes(b"")
                probe.unlink()
        except OSError as err:
            reason = err.strerror or str(err)
            where = f" ({err.filename})" if err.filename and str(err.filename) != str(out) else ""
            raise IchsegError(f"{label} {out}: cannot write there: {reason}{where}") from None
    return out


def csv_list(kind: type = str):
    """An argparse type for comma-separated lists of `kind`."""

    def parse(text: str) -> list:
        return [kind(part) for part in text.split(",") if part]

    return parse


def allow_non_hu_option(parser: argparse.ArgumentParser) -> None:
    """`--allow-non-hu`."""
    parser.add_argument(
        "--allow-non-hu",
        action="store_true",
        help="go on with volumes that do not look like head CT in Hounsfield units (recorded)",
    )


def binary_labels_option(parser: argparse.ArgumentParser, whose: str) -> None:
    """`--binary-labels`; `whose` names the masks it reads."""
    parser.add_argument(
        "--binary-labels",
        action="store_true",
        help=f"{whose} masks are a binary (0/1) export of a layout whose label map names "
        "subtypes (bhsd, nnunet_raw): read every bleed without subtypes",
    )


def inference_options(parser: argparse.ArgumentParser, precision: str) -> None:
    """Options shared by predict and evaluate; `precision` is the command's default."""
    allow_non_hu_option(parser)
    parser.add_argument(
        "--flip", action="store_true", help="average with left-right mirrored input"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU when present)")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default=precision,
        help="auto: bf16 where the GPU or CPU (AMX, AVX512-BF16) computes it natively, else fp32 "
        "(fp32: the same result on every machine)",
    )


def inference_kwargs(args: argparse.Namespace) -> dict:
    """The shared inference options as keyword arguments."""
    keys = ("flip", "batch_size", "device", "precision", "allow_non_hu")
    return {key: getattr(args, key) for key in keys}


# Set when a W&B request failed: wandb's exit hook then joins its service process, which may
# still wait on a silent server, so the console script leaves without running exit hooks.
_wandb_may_hang_at_exit = False


def note_wandb_failed() -> None:
    """Have the console script leave without running exit hooks: a W&B request failed."""
    global _wandb_may_hang_at_exit
    _wandb_may_hang_at_exit = True


def wandb_may_hang_at_exit() -> bool:
    """Whether a W&B request of this process failed (`note_wandb_failed`)."""
    return _wandb_may_hang_at_exit
