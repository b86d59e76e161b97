"""What the fault tests share: a `loadbench` subprocess in its own process group, and that group's survivors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.subprocesses import interruptible

ROOT = Path(__file__).resolve().parents[2]
# The smallest real run: one float32 cell, prefill only.
ONE_CELL = [
    "--dtype",
    "float32",
    "--quant",
    "none",
    "--attn",
    "sdpa",
    "--grad-ckpt",
    "off",
    "--workloads",
    "prefill",
    "--min-samples",  # these tests check records, processes and files, not statistics
    "2",
]


def cli_env(**extra: str) -> dict[str, str]:
    """This checkout first on the path (the editable install may point at another)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def start_cli(args: list[str], **env: str) -> subprocess.Popen[str]:
    """`python -m bench.cli ARGS` as the leader of a new process group (the pgid is its pid)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *args],
        env=cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=interruptible,
    )


def group_members(pgid: int) -> list[str]:
    """`pid cmdline` of every live process whose process group is `pgid` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            try:
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                cmd = "?"
            found.append(f"{stat.parent.name} {cmd}")
    return found
