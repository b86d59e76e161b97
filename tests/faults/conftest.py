"""Helpers of the fault-injection suite: real `loadbench run` processes on the tiny CPU model.

Each test injects one fault and checks the three invariants issue 12 asks of every fault: no finished
record is lost or duplicated, every planned cell ends with a final record or is reported `missing`, and no
process of the runner's process group outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.run.faults import FAULTS_ENV
from bench.schema import FINAL_STATUSES
from tests.subprocesses import interruptible

ROOT = Path(__file__).resolve().parents[2]
# Two dtypes x two attentions: four runnable cells of about a second each on one CPU thread.
CELLS = [f"{d}/none/{a}/no-ckpt/cache-auto" for d in ("float32", "bfloat16") for a in ("eager", "sdpa")]


def run_args(model: Path, out: Path, *extra: str, dtype: str = "float32,bfloat16") -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.cli",
        "run",
        "--model",
        str(model),
        "--dtype",
        dtype,
        "--attn",
        "eager,sdpa",
        "--quant",
        "none",
        "--grad-ckpt",
        "off",
        "--workloads",
        "prefill",
        "--seq",
        "16",
        "--budget",
        "0.1",
        "--min-samples",  # the fault tests check records and processes, not statistics
        "2",
        "--no-live",
        "--out",
        str(out),
        *extra,
    ]


def _env(faults: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop(FAULTS_ENV, None)
    if faults:
        env[FAULTS_ENV] = json.dumps(faults)
    return env


def start(args: list[str], faults: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A runner in its own process group (its pgid is its pid), so what it leaves behind can be listed."""
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=_env(faults),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=interruptible,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 900) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def run(args: list[str], faults: dict[str, str] | None = None, timeout: float = 900) -> tuple[int, str, int]:
    """(exit code, output, process group) of one runner, waited for."""
    proc = start(args, faults)
    code, out = finish(proc, timeout)
    return code, out, proc.pid


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def assert_no_process_left(pgid: int, grace_s: float = 5.0) -> None:
    deadline = time.monotonic() + grace_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_members(pgid)
    for pid in left:  # leave the machine clean for the next test, then fail
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the runner's group {pgid} outlived it: {left}"


def records(out: Path) -> list[dict[str, Any]]:
    """Every line parses: a run directory never holds a torn line after these faults."""
    return [json.loads(line) for line in (out / "records.jsonl").read_bytes().splitlines()]


def assert_each_planned_cell_final_once(out: Path) -> list[dict[str, Any]]:
    plan = json.loads((out / "run.json").read_text())["plan"]
    finals = Counter(r["cell_id"] for r in records(out) if r["status"] in FINAL_STATUSES)
    assert set(finals) == {c["cell_id"] for c in plan}, "a planned cell has no final record"
    assert set(finals.values()) == {1}, f"a cell has more than one final record: {finals}"
    return records(out)


def wait_for_lines(path: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_bytes().splitlines()) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} has fewer than {count} lines after {timeout} s")


def wait_for_claim(out: Path, timeout: float = 120) -> None:
    """Until a runner has claimed a cell of `out` (the cell is starting or running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "claims").is_dir() and any((out / "claims").iterdir()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no cell of {out} was claimed after {timeout} s")


@pytest.fixture
def model(tiny_llama: Path) -> Path:
    return tiny_llama
