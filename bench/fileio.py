"""Durable file writes, once: write a temporary file beside the target, fsync it, rename, fsync the folder.

A reader then sees the old file or the new one, never half of either, even after a crash or a full disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# mkstemp creates 0600 files; a report or record file should get the mode any other file would.
_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_dir", "write_all"]


def fsync_dir(directory: Path) -> None:
    """Make a created or renamed entry durable: fsyncing a file does not persist its directory entry."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. certain network mounts) refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a full disk, a signal); finish or raise.

    For writes that must stay one os.write on a raw descriptor, e.g. a line appended with O_APPEND.
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Replace `path` with `data` atomically and durably; the parent folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Replace `path` with UTF-8 `text` atomically and durably."""
    return atomic_write_bytes(path, text.encode("utf-8"))
