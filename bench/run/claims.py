"""Claims on cells, so runners sharing one run directory never run a cell twice at the same time.

A claim is the file `claims/<cell_id>` holding `hostname pid`. A claim whose process is gone, or a file cut
short by a killed writer, is stale and may be taken over; another host's process cannot be checked from
here, so its claim is respected. Callers hold the run directory's lock (RunStore.claim / release).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from bench.fileio import atomic_write_bytes

__all__ = ["drop_claim", "take_claim"]


def _me() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def _pid_alive(pid: int) -> bool:
    """Signal 0 checks existence without touching the process; EPERM still means it exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_claim(text: str) -> tuple[str, int] | None:
    """`hostname pid`, or None for a claim file cut short by a killed writer (then it is stale)."""
    parts = text.split()
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _owner(path: Path) -> tuple[str, int] | None:
    """Who holds the claim at `path`; None when nobody does or the file is unreadable as a claim."""
    return _parse_claim(path.read_text(encoding="utf-8")) if path.exists() else None


def _claim_is_live(owner: tuple[str, int] | None, hostname: str) -> bool:
    """Another host's process cannot be checked from here, so its claim is respected."""
    if owner is None:
        return False
    host, pid = owner
    return host != hostname or _pid_alive(pid)


def take_claim(path: Path) -> bool:
    """Write this process's claim at `path`; False when a live process (not this one) holds it."""
    me = _me()
    owner = _owner(path)
    if owner != me and _claim_is_live(owner, me[0]):
        return False
    atomic_write_bytes(path, f"{me[0]} {me[1]}\n".encode())
    return True


def drop_claim(path: Path) -> None:
    """Remove the claim at `path` if it is this process's; another process's claim is left alone."""
    if _owner(path) == _me():
        path.unlink()
