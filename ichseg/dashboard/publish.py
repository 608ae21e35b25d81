"""A view's spec written to a file (`--dry-run`) and read back, or the view saved to W&B.

The spec is the view as `wandb_workspaces` sends it (`Workspace._to_model()`, the model of a W&B
view), in JSON, with an `ichseg` entry saying what wrote it, which the library's model ignores:
`load_spec` builds it back into a `Workspace`. A file is replaced only when it is such a spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import wandb_workspaces.workspaces as ws
from wandb_workspaces.workspaces import internal

from ichseg.atomic import atomic_write_text
from ichseg.errors import IchsegError, first_line
from ichseg.sweeps.wandb_api import API_TIMEOUT_S, within

SPEC_WRITER = "ichseg dashboard"
MARK = "ichseg"
DRY_RUN_HINT = "write the view's spec without a server with --dry-run OUT.json"


def split_project(text: str) -> tuple[str, str]:
    """`--project ENTITY/PROJECT` as (entity, project)."""
    entity, _, project = text.partition("/")
    if not entity or not project or "/" in project:
        raise IchsegError(f"--project {text!r}: expected ENTITY/PROJECT")
    return entity, project


def spec(view: ws.Workspace, about: dict[str, Any]) -> dict[str, Any]:
    """The view's spec as JSON data, `about` (its sweep and group) under `MARK`."""
    data = view._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)
    return {**data, MARK: {"written_by": SPEC_WRITER, **about}}


def _written_here(path: Path) -> bool:
    """Whether the file at `path` is a spec `write_spec` wrote."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and (data.get(MARK) or {}).get("written_by") == SPEC_WRITER


def check_spec_path(path: Path) -> None:
    """Refuse `path` as the spec's file when it is a folder, or a file not written here."""
    if path.is_dir():
        raise IchsegError(f"--dry-run {path}: is a folder; give a file name such as view.json")
    if path.exists() and not _written_here(path):
        raise IchsegError(
            f"--dry-run {path}: exists and is not a view spec {SPEC_WRITER} wrote; choose "
            "another file or remove it"
        )


def write_spec(view: ws.Workspace, path: Path, about: dict[str, Any]) -> None:
    """Write the view's spec to `path` atomically; a file there is replaced only when it is a
    spec written here."""
    check_spec_path(path)
    atomic_write_text(path, json.dumps(spec(view, about), indent=1) + "\n")


def load_spec(path: Path) -> ws.Workspace:
    """The `Workspace` a spec file holds, built through `wandb_workspaces`' own view model."""
    try:
        model = internal.View.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IchsegError(f"{path}: not a W&B view spec ({first_line(exc)})") from None
    return ws.Workspace._from_model(model)


def save_view(view: ws.Workspace) -> str:
    """Save the view to W&B as a new view of its project; its URL. Without credentials, or
    without an answer from the server within a bound, one line that points to --dry-run."""
    import wandb

    def save() -> str:
        api = wandb.Api(timeout=API_TIMEOUT_S)
        if not view.entity:
            entity = api.default_entity
            if not entity:
                raise IchsegError("W&B names no default entity; give --project ENTITY/PROJECT")
            view.entity = entity
        view.save()
        return view.url

    try:
        return within(3 * API_TIMEOUT_S, save)
    except IchsegError:
        raise
    except wandb.errors.UsageError as exc:  # no API key: `wandb login` was never run
        raise IchsegError(
            f"cannot save the view to W&B: {first_line(exc)}; {DRY_RUN_HINT}"
        ) from None
    except Exception as exc:  # any failure of a request is the same to the user: not saved
        raise IchsegError(
            f"cannot save the view to W&B ({first_line(exc)}); check the network and "
            f"`wandb login`, or {DRY_RUN_HINT}"
        ) from None
