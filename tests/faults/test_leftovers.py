"""Fault rows 7 and 8 of issue 12: no process outlives `loadbench run`, Ctrl-C prints no "leaked semaphore"
warning, a Ray cluster loadbench started is shut down, and the first line a user sees is loadbench's own
(library noise goes to logs/template.log). Each runs a real `loadbench run` in its own process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.helpers import ONE_CELL, group_members, start_cli

pytestmark = pytest.mark.slow

NOISE = ("Failed to load CPU gemm_4bit_forward", "leaked semaphore", "Traceback", "Warning:")


def _no_survivors(pgid: int) -> list[str]:
    """The group's members, after a short grace for the kernel to reap what already exited."""
    deadline = time.monotonic() + 2
    members = group_members(pgid)
    while members and time.monotonic() < deadline:
        time.sleep(0.1)
        members = group_members(pgid)
    return members


def test_run_leaves_no_process_and_its_first_line_is_its_own(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start_cli(["run", *ONE_CELL, "--out", str(out), "--no-live"])
    stdout, stderr = proc.communicate(timeout=600)
    # checked at once: the forkserver and the resource tracker used to linger after the parent exited
    assert group_members(proc.pid) == []
    assert proc.returncode == 0, stderr
    assert stdout.splitlines()[0].startswith("loadbench: "), stdout
    assert stdout.splitlines()[-1].startswith("time: "), stdout  # flushed before the process ended itself
    assert not any(noise in stderr + stdout for noise in NOISE), stderr
    assert (out / "logs" / "template.log").is_file()  # where the libraries' import-time messages went


def test_ctrl_c_prints_no_leaked_semaphore_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    label = "float32/none/sdpa/no-ckpt/cache-auto"
    proc = start_cli(
        ["run", *ONE_CELL, "--out", str(out), "--no-live"], LOADBENCH_TEST_FAULTS=json.dumps({label: "sleep"})
    )
    deadline = time.monotonic() + 300
    while not any((out / "claims").glob("*")):  # claimed: its process is starting
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    time.sleep(3)  # the cell is in its sleep: from_pretrained has not run; the template and tracker are up
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "leaked semaphore" not in stderr and "Traceback" not in stderr, stderr
    assert _no_survivors(proc.pid) == []
    statuses = [json.loads(line)["status"] for line in (out / "records.jsonl").read_text().splitlines()]
    assert statuses == ["interrupted"]


def test_a_killed_cell_leaks_no_semaphore(tmp_path: Path) -> None:
    """A cell killed on timeout after from_pretrained showed a progress bar (tqdm's lock used to be a
    multiprocessing semaphore, which the resource tracker reported as leaked at exit)."""
    out = tmp_path / "run"
    proc = start_cli(
        ["run", *ONE_CELL, "--workloads", "prefill,train,decode", "--timeout", "4", "--out", str(out)]
    )
    _, stderr = proc.communicate(timeout=600)
    assert "leaked semaphore" not in stderr, stderr
    assert group_members(proc.pid) == []


@pytest.mark.xdist_group("ray")  # beside tests/test_ray.py's cluster, never at the same time
def test_ray_local_cluster_is_shut_down(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    ray_tmp = Path("/tmp") / f"lbray{os.getpid()}"  # Ray's socket paths must stay short
    out = tmp_path / "run"
    proc = start_cli(
        ["run", *ONE_CELL, "--executor", "ray", "--out", str(out), "--no-live"], RAY_TMPDIR=str(ray_tmp)
    )
    try:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        assert _no_survivors(proc.pid) == []
        # raylet, GCS, dashboard and runtime-env agents name their session directory under RAY_TMPDIR
        deadline = time.monotonic() + 30
        while (left := _ray_processes(ray_tmp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == []
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)


def _ray_processes(ray_tmp: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(ray_tmp) in text:
            found.append(f"{cmdline.parent.name} {text[:120]}")
    return found
