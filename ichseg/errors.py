"""The one exception type a user sees: a single line that names the file or key."""

from pathlib import Path


class IchsegError(Exception):
    """An error the user can act on; its message is one line naming the file, patient or key."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none: the detail an
    IchsegError quotes from the library error behind it."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def require_file(path: Path, label: str, kind: str) -> None:
    """Refuse, in one line, a `path` that is not a file: "`label` `path`: expected `kind`,
    found a folder" (or "found nothing")."""
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing"
        raise IchsegError(f"{label} {path}: expected {kind}, found {found}")
