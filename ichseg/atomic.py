"""Crash-safe file writes and inter-process locks.

Every file another process may read (caches, records, checkpoints, reports) is written to a
temporary name in the same folder and renamed into place, so a reader sees the old file or the
new one, never half of one. Locks are `flock`s: the operating system releases them when the
holder exits, so a killed process never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ichseg.errors import IchsegError

# A full disk or quota: the user can act on it, and the previous file is still there.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_replaceable(path: Path, owned_by: tuple[str, ...]) -> None:
    """Raise unless `path` is missing, an empty folder, or a folder holding every name in
    `owned_by` (the files that mark it as one ichseg wrote): nothing else is ever replaced."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise IchsegError(f"{path}: exists and is not a folder; choose another path or remove it")
    try:
        names = {p.name for p in path.iterdir()}
    except OSError as exc:
        raise IchsegError(f"{path}: cannot list the folder ({exc.strerror})") from None
    missing = [name for name in owned_by if name not in names]
    if names and (missing or not owned_by):
        raise IchsegError(
            f"{path}: exists and holds files ichseg did not write there (no "
            f"{', '.join(missing or ['ichseg marker'])}); choose another folder or remove it"
        )


def _first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist yet; None if `path` exists."""
    missing = None
    for folder in (path, *path.absolute().parents):
        if folder.exists():
            break
        missing = folder
    return missing


@contextlib.contextmanager
def created_folders_removed_on_failure(path: str | os.PathLike) -> Iterator[None]:
    """When the block raises, remove the folder `path` and those of its parents the block
    created, each only while it is empty: a folder anything was written into stays."""
    path = Path(path).absolute()
    outermost = _first_missing(path)
    try:
        yield
    except BaseException:
        if outermost is not None:
            for folder in (path, *path.parents):
                try:
                    folder.rmdir()
                except OSError:
                    break
                if folder == outermost:
                    break
        raise


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, is_dir: bool = False, owned_by: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    A folder (`is_dir`) replaces only a missing or empty `path`, or one holding every file named
    in `owned_by` (what this writer puts there); anything else is refused before any write. A
    failed block leaves neither the temporary nor the parent folders it created.
    """
    path = Path(path)
    if is_dir:
        check_replaceable(path, owned_by)
    with created_folders_removed_on_failure(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        with _renamed_into_place(path, is_dir) as tmp:
            yield tmp


@contextlib.contextmanager
def _renamed_into_place(path: Path, is_dir: bool) -> Iterator[Path]:
    """`atomic_path`'s temporary, in an existing parent folder: renamed onto `path` if the block
    succeeds, removed otherwise."""
    existed = path.exists()
    prefix = f".{path.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        mode = 0o777
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        mode = 0o666
    # mkstemp/mkdtemp create 0600/0700; give the result the permissions a plain open() or
    # mkdir would, so caches and reports are readable by the rest of a shared group.
    os.chmod(tmp, mode & ~_current_umask())
    try:
        yield tmp
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            kept = f"the previous {path.name} is kept" if existed else "nothing was written"
            raise IchsegError(
                f"{path}: cannot write it, {os.strerror(exc.errno).lower()} ({kept}; "
                "free space and run again)"
            ) from exc
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def try_lock(path: str | os.PathLike) -> int | None:
    """An open descriptor holding an exclusive flock on `path` (created if missing), or None
    when another process holds it. Close the descriptor to release the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, remove_on_failure: bool = False) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if missing) for the duration of the block.

    With `remove_on_failure`, a block that raises deletes the lock file while still holding it,
    and the folders made for it, so a failed build leaves nothing behind. A process that was
    waiting then holds the lock of a deleted file, sees that, and locks the file at `path`
    afresh: two processes never hold the lock of one path at once.
    """
    path = Path(path)
    cleanup = (
        created_folders_removed_on_failure(path.parent)
        if remove_on_failure
        else contextlib.nullcontext()
    )
    with cleanup:
        fd = _lock_current_file(path)
        try:
            yield
        except BaseException:
            if remove_on_failure:
                path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)  # releases the flock


def _lock_current_file(path: Path) -> int:
    """A descriptor holding the flock of the file at `path` now (not of one deleted meanwhile)."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # the folder was removed meanwhile: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
