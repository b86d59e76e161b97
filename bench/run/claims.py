"""Claims on cells are leases, so runners sharing one run directory never run a cell twice at the same time
and a dead runner, on any host, never holds a cell forever.

A claim is the file `claims/<cell_id>` holding one JSON object: `host`, `pid`, `boot_id` (the kernel's
/proc/sys/kernel/random/boot_id), `heartbeat` (Unix time, refreshed by the holder while the cell runs) and
`lease_s` (how long the claim lives without a heartbeat). A claim is stale, and may be taken over, when:
its heartbeat is older than its lease (whatever its host: a CI rerun or a new container gets a new
hostname); it names this host but another boot (the pid may have been reused since); it names a process of
this host and boot that is gone; or it cannot be read as a claim (cut short by a killed writer, or written
by an older loadbench). Callers hold the run directory's lock (RunStore.claim / refresh / release).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fileio import atomic_write_bytes

__all__ = ["DEFAULT_LEASE_S", "Claim", "drop_claim", "refresh_claim", "stale_reason", "take_claim"]

# A lease when the holder names none: a few cell timeouts of the CPU default (120 s).
DEFAULT_LEASE_S = 360.0
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str | None:
    """This boot's id; None where the kernel does not expose one (then only pid and heartbeat count)."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class Claim:
    """Who holds a cell, and until when without a heartbeat."""

    host: str
    pid: int
    boot_id: str | None
    heartbeat: float
    lease_s: float

    @classmethod
    def mine(cls, lease_s: float) -> Claim:
        return cls(socket.gethostname(), os.getpid(), boot_id(), time.time(), lease_s)

    def same_holder(self, other: Claim) -> bool:
        return (self.host, self.pid, self.boot_id) == (other.host, other.pid, other.boot_id)

    def to_bytes(self) -> bytes:
        fields = {
            "host": self.host,
            "pid": self.pid,
            "boot_id": self.boot_id,
            "heartbeat": self.heartbeat,
            "lease_s": self.lease_s,
        }
        return (json.dumps(fields) + "\n").encode("utf-8")


def _pid_alive(pid: int) -> bool:
    """Signal 0 checks existence without touching the process; EPERM still means it exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def parse_claim(text: str) -> Claim | None:
    """The claim a file holds, or None when it is not a complete claim of this format."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    host, pid, boot = data.get("host"), data.get("pid"), data.get("boot_id")
    heartbeat, lease = _number(data.get("heartbeat")), _number(data.get("lease_s"))
    if not isinstance(host, str) or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    if heartbeat is None or lease is None or lease <= 0 or not (boot is None or isinstance(boot, str)):
        return None
    return Claim(host, pid, boot, heartbeat, lease)


def _read(path: Path) -> tuple[bool, Claim | None]:
    """(the file exists, its claim or None when unreadable as one)."""
    try:
        return True, parse_claim(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return False, None
    except OSError:
        return True, None


def stale_reason(claim: Claim | None, me: Claim, now: float) -> str | None:
    """Why a claim no longer holds its cell, or None while it does."""
    if claim is None:
        return "the claim file is not a complete claim (cut short, or written by an older loadbench)"
    age = now - claim.heartbeat
    if age > claim.lease_s:
        return f"its heartbeat is {age:.0f} s old, over its {claim.lease_s:.0f} s lease"
    if claim.host != me.host:
        return None  # another host's process cannot be checked from here: the heartbeat decides
    if claim.boot_id and me.boot_id and claim.boot_id != me.boot_id:
        return f"it was made before this host rebooted (boot id {claim.boot_id})"
    if not _pid_alive(claim.pid):
        return f"process {claim.pid} on this host is gone"
    return None


def take_claim(path: Path, lease_s: float = DEFAULT_LEASE_S) -> tuple[bool, str | None]:
    """Claim the cell at `path` for this process: (taken, why a stale claim was taken over, if one was)."""
    me = Claim.mine(lease_s)
    exists, held = _read(path)
    note = None
    if exists and not (held is not None and held.same_holder(me)):
        why = stale_reason(held, me, me.heartbeat)
        if why is None:
            return False, None
        holder = f"{held.host} pid {held.pid}" if held is not None else "unknown"
        note = f"took over a stale claim on cell {path.name} (held by {holder}): {why}."
    atomic_write_bytes(path, me.to_bytes())
    return True, note


def refresh_claim(path: Path, lease_s: float = DEFAULT_LEASE_S) -> bool:
    """Renew the heartbeat of this process's claim at `path`; False when the claim is no longer ours."""
    me = Claim.mine(lease_s)
    _, held = _read(path)
    if held is None or not held.same_holder(me):
        return False
    atomic_write_bytes(path, me.to_bytes())
    return True


def drop_claim(path: Path) -> None:
    """Remove the claim at `path` if it is this process's; another process's claim is left alone."""
    _, held = _read(path)
    if held is not None and held.same_holder(Claim.mine(DEFAULT_LEASE_S)):
        path.unlink()
