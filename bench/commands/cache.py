"""`loadbench cache list | clean [--older-than 7d]`: what loadbench keeps in its cache, and freeing it.

The cache ($LOADBENCH_CACHE, else ~/.cache/loadbench) holds random-weight checkpoints (checkpoints/,
each with its loadbench.json marker), builds a crash left behind (checkpoints/.NAME.tmp-*) and quality
references (quality/*.safetensors). Only those are listed or removed: the directory may be shared,
so nothing without loadbench's own layout is touched. The Hugging Face cache is never touched.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import EXIT_OK, SpecError

__all__ = ["Entry", "entries", "parse_age", "register", "run"]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Entry:
    """One cache entry: a checkpoint, a leftover partial build, or a quality reference."""

    kind: str  # "checkpoint" | "partial build" | "quality reference"
    path: Path
    size: int
    mtime: float


def parse_age(text: str) -> float:
    """'7d', '12h', '30m', '90s', '2w' -> seconds; anything else is one sentence naming the flag."""
    match = _AGE.match(text)
    if not match:
        raise SpecError(
            f"--older-than={text!r} is not an age; use a number and a unit: s, m, h, d or w (e.g. 7d)."
        )
    return float(match.group(1)) * _SECONDS[match.group(2)]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def entries(root: Path) -> list[Entry]:
    """loadbench's own entries under `root`, oldest first."""
    from bench.plan.checkpoints import MARKER

    found: list[Entry] = []
    ckpts = root / "checkpoints"
    if ckpts.is_dir():
        for d in ckpts.iterdir():
            if not d.is_dir() or d.is_symlink():
                continue
            if d.name.startswith(".") and ".tmp-" in d.name:
                found.append(Entry("partial build", d, _size(d), d.stat().st_mtime))
            elif (d / MARKER).is_file():
                found.append(Entry("checkpoint", d, _size(d), (d / MARKER).stat().st_mtime))
    quality = root / "quality"
    if quality.is_dir():
        for f in quality.glob("*.safetensors"):
            if f.is_file() and not f.is_symlink():
                found.append(Entry("quality reference", f, f.stat().st_size, f.stat().st_mtime))
    return sorted(found, key=lambda e: e.mtime)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `loadbench cache list|clean`."""
    p = subparsers.add_parser("cache", help="list or free loadbench's own cache (checkpoints, references)")
    p.add_argument(
        "action", choices=("list", "clean"), help="list: entries with sizes and ages; clean: remove them"
    )
    p.add_argument("--older-than", dest="older_than", help="clean only entries older than this, e.g. 7d, 12h")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """List the entries with sizes and ages, or remove them (all, or those older than --older-than)."""
    from rich.console import Console
    from rich.table import Table

    from bench.plan.checkpoints import cache_root
    from bench.units import fmt_bytes

    root = cache_root()
    if args.action == "list" and args.older_than:
        raise SpecError("--older-than applies to `cache clean`, not `cache list`.")
    min_age = parse_age(args.older_than) if args.older_than else 0.0
    now = time.time()
    found = [e for e in entries(root) if now - e.mtime >= min_age]
    console = Console(width=200 if not sys.stdout.isatty() else None)
    if args.action == "list":
        table = Table(title=f"loadbench cache: {root}")
        for col in ("kind", "entry", "size", "age"):
            table.add_column(col, justify="right" if col in ("size", "age") else "left")
        for e in found:
            table.add_row(e.kind, e.path.name, fmt_bytes(e.size), _age(now - e.mtime))
        console.print(table)
        console.print(f"{len(found)} entries, {fmt_bytes(sum(e.size for e in found))} in all")
        return EXIT_OK
    for e in found:
        if e.path.is_dir():
            shutil.rmtree(e.path)
        else:
            e.path.unlink()
    what = f" older than {args.older_than}" if args.older_than else ""
    console.print(f"removed {len(found)} entries{what}, {fmt_bytes(sum(e.size for e in found))}, from {root}")
    return EXIT_OK


def _age(seconds: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.1f}{unit}"
    return f"{seconds:.0f}s"
