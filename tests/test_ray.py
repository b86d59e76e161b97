"""The Ray executor on a real local cluster (started on loopback by the test): same cells, same statuses."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.cli import main
from bench.run.store import FINAL_STATUSES, RunStore

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'loadbench[ray]')")
# one xdist worker holds every Ray cluster of the suite (CI runs the slow tests on two workers)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]
ROOT = Path(__file__).resolve().parents[1]
PORT = 6391


# A test cluster on loopback only, without token auth (nothing outside this machine can reach it).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


# session, not module: a worker of pytest-xdist may tear a module fixture down between batches of its tests,
# and a second `ray start` on the port the first just left fails
@pytest.fixture(scope="session")
def cluster():
    mp = pytest.MonkeyPatch()
    for key, value in RAY_ENV.items():
        mp.setenv(key, value)
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    subprocess.run(
        [
            ray_bin,
            "start",
            "--head",
            f"--port={PORT}",
            "--num-cpus=2",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield f"127.0.0.1:{PORT}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120)
        mp.undo()


def statuses(out: Path) -> dict[str, str]:
    return {r["cell_id"]: r["status"] for r in RunStore.open(out).records() if r["status"] in FINAL_STATUSES}


def run_cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "run", "--no-live", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_default_preset_same_cells_and_statuses_as_local(cluster, tmp_path) -> None:
    local, remote = tmp_path / "local", tmp_path / "ray"
    fast = ["--budget", "0.2", "--min-samples", "2", "--no-quality"]  # statuses, not statistics
    assert main(["run", "--out", str(local), "--no-live", *fast]) == 0
    proc = run_cli(["--executor", "ray", "--address", cluster, "--out", str(remote), *fast])
    assert proc.wait(timeout=600) == 0, proc.stdout.read().decode()[-3000:]
    assert statuses(remote) == statuses(local)
    assert len(statuses(local)) == 24
    records = RunStore.open(remote).records()
    assert all(r.get("node_ip") == "127.0.0.1" for r in records if r["status"] == "ok")  # loopback only
    nodes = RunStore.open(remote).meta["nodes"]
    assert len(nodes) == 1 and nodes[0]["cpu_cores_logical"] >= 1


def test_killed_driver_then_resume_runs_every_cell_once(cluster, tmp_path) -> None:
    out = tmp_path / "run"
    args = [
        "--executor",
        "ray",
        "--address",
        cluster,
        "--out",
        str(out),
        "--dtype",
        "float32,bfloat16",
        "--quant",
        "none",
        "--attn",
        "eager,sdpa",
        "--grad-ckpt",
        "off",
        "--workloads",
        "prefill,decode",
        "--seq",
        "32",
        "--budget",
        "0.2",
    ]
    proc = run_cli(args)
    records = out / "records.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (records.exists() and records.read_bytes().count(b"\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    before = len(statuses(out))
    assert 1 <= before < 4
    resumed = run_cli([*args, "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()[-3000:]
    lines = [json.loads(line) for line in records.read_bytes().splitlines()]
    finals = Counter(r["cell_id"] for r in lines if r["status"] in FINAL_STATUSES)
    assert len(finals) == 4 and set(finals.values()) == {1}
    assert RunStore.open(out).meta["executor"]["kind"] == "ray"


def test_missing_ray_is_one_sentence(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["run", "--executor", "ray", "--out", str(tmp_path / "x"), "--no-live"]) == 2
    assert "pip install 'loadbench[ray]'" in capsys.readouterr().err
