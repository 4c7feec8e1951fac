"""Durable local writes: fsync of files and directories, and whole-file replacement.

A write on local disk counts as accepted only when it survives a power loss:
the file's bytes are fsynced, and so is the directory entry that names it
(a rename or a new file is durable only once its directory is). Used by the
lake's local store, the model store and the spool.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "fsync_path", "write_file"]


def fsync_path(path: str | os.PathLike[str], directory: bool = False) -> None:
    """fsync a file, or with ``directory`` a directory (so a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync directory ``path``: the entries created, renamed or removed in it are durable."""
    fsync_path(path, directory=True)


def write_file(path: Path, data: bytes, *, staging: Path | None = None,
               mode: int = 0o640) -> None:
    """Replace ``path`` with ``data``, all or nothing, durably.

    The bytes go to ``staging`` (default: the hidden ``.NAME.tmp`` beside
    ``path``, which readers of the directory skip), are fsynced, renamed to
    ``path``, and the directory is fsynced. On any failure the staging file is
    removed and the error (``OSError``) raised; ``path`` is then untouched.
    """
    tmp = staging if staging is not None else path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
