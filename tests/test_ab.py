"""`loadbench ab` end to end on the tiny model: an A/A run passes, a side slowed through its environment is a
regression, bad sides are one sentence, and Ctrl-C leaves resumable records and no side process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bench.cli import main
from bench.run.ab.schedule import round_slots
from tests.faults.helpers import cli_env
from tests.subprocesses import interruptible

ROOT = Path(__file__).resolve().parents[1]
SLOWDOWN = ROOT / "tests" / "slowdown"
# One float32 cell, prefill only, short rounds: these tests check the gate's plumbing and a 4x slowdown.
TINY = [
    "--dtype", "float32", "--quant", "none", "--attn", "sdpa", "--grad-ckpt", "off",
    "--workloads", "prefill", "--budget", "0.02", "--no-quality", "--seed", "7",
]  # fmt: skip


def ab_args(out: Path, *extra: str) -> list[str]:
    return ["ab", "--base", sys.executable, "--new", sys.executable, *TINY, "--out", str(out), *extra]


def run_ab(args: list[str], **env: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.cli", *args],
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=interruptible,
    )
    return done.returncode, done.stdout, done.stderr


def side_records(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines()) if r.get("side")]


def test_an_a_a_run_passes_with_paired_interleaved_records(tmp_path: Path) -> None:
    out = tmp_path / "aa"
    code, stdout, stderr = run_ab(ab_args(out, "--rounds", "6", "--min-effect", "20%"))
    assert code == 0, stderr[-3000:]
    assert stdout.startswith("## loadbench ab: ✅ 0 regression(s)") and "an A/A run" in stdout
    records = side_records(out)
    last = max(r["ab.round"] for r in records)  # 5 when the cell settled early (equivalent within 2.5 %)
    assert last in (5, 6)
    assert sorted((r["ab.round"], r["side"]) for r in records) == [
        (r, s) for r in range(1, last + 1) for s in ("base", "new")
    ]
    assert all(r["status"] == "ok" and r["prefill.latency_s.n"] >= 3 for r in records)
    # the untimed read-backs run in each side's first round only; --no-quality holds in every round
    assert all(r["attn.sdpa_kernel"] for r in records if r["ab.round"] == 1)
    later = [r for r in records if r["ab.round"] > 1]
    assert {r["attn.sdpa_kernel.reason"] for r in later} == {"read in this side's first round"}
    assert {r["quality.reason"] for r in records} == {"quality was turned off (--no-quality)"}
    firsts = {r["ab.round"]: r["side"] for r in records if r["ab.first"]}
    assert set(firsts.values()) == {"base", "new"}  # the side that goes first alternates
    meta = json.loads((out / "run.json").read_text())
    assert meta["ab"]["seed"] == 7 and set(meta["ab"]["sides"]) == {"base", "new"}
    assert meta["ab"]["sides"]["new"]["environment"]["torch_version"]
    assert (out / "ab.md").read_text() == stdout
    # `loadbench report` renders the same verdict again
    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "ab.md").read_text() == stdout


def test_a_side_slowed_by_its_environment_is_a_regression(tmp_path: Path) -> None:
    out = tmp_path / "slow"
    code, stdout, stderr = run_ab(
        ab_args(
            out,
            "--rounds",
            "8",
            "--new-env",
            f"PYTHONPATH={SLOWDOWN}{os.pathsep}{ROOT}",
            "--new-env",
            "LOADBENCH_SLOWDOWN=compute=3.0",  # 4x: decided in 6 rounds even on a busy machine
            "--format",
            "json",
        )
    )
    assert code == 1, stderr[-3000:]
    doc = json.loads(stdout)
    regressed = {r["metric"]: r for r in doc["results"] if r["verdict"] == "regression"}
    assert {"prefill.latency_s", "prefill.tokens_per_s"} <= set(regressed)
    assert regressed["prefill.latency_s"]["ratio"] > 1.2  # 4x in compute; a busy machine blurs it
    assert any(d["field"] == "env LOADBENCH_SLOWDOWN" for d in doc["differences"])


def test_bad_sides_are_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ab", "--base", str(tmp_path / "nope"), "--new", sys.executable]) == 2
    assert "--base" in (err := capsys.readouterr().err) and "is not an executable Python interpreter" in err
    with pytest.raises(SystemExit):
        main(["ab", "--base", sys.executable, "--new", sys.executable, "--new-env", "NOEQUALS"])
    assert "expected NAME=VALUE" in capsys.readouterr().err


@pytest.mark.slow
def test_a_side_that_cannot_serve_and_one_of_another_measurement_version_are_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fakepython"
    fake.write_text("#!/bin/sh\necho 'no loadbench here' >&2\nexit 3\n")
    fake.chmod(0o755)
    code, _, stderr = run_ab(
        ["ab", "--base", str(fake), "--new", sys.executable, *TINY, "--out", str(tmp_path / "a")]
    )
    assert code == 2 and "the base side's process ended" in stderr, stderr[
        -2000:
    ]  # on send or on read: a race
    assert "no loadbench here" in stderr and "Traceback" not in stderr
    other = tmp_path / "version"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import bench.plan.spec as s\ns.MEASURE_VERSION = 99\n")
    code, _, stderr = run_ab(ab_args(tmp_path / "b", "--new-env", f"PYTHONPATH={other}{os.pathsep}{ROOT}"))
    assert code == 2, stderr[-2000:]
    assert "the base side measures with measurement version 1 and the new side with 99" in stderr


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment carries `tag` (the command's sides and their cells)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (
                tag.encode() in (proc / "environ").read_bytes()
                and b"Z" not in (proc / "stat").read_bytes().rsplit(b")", 1)[1][:3]
            ):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_ctrl_c_keeps_the_records_stops_both_sides_and_resume_finishes(tmp_path: Path) -> None:
    out = tmp_path / "ab"
    tag = f"LOADBENCH_TEST_TAG={uuid.uuid4().hex}"
    key, value = tag.split("=")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *ab_args(out, "--rounds", "6", "--min-effect", "20%")],
        env=cli_env(**{key: value}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline and len(side_records(out) if (out / "records.jsonl").exists() else []) < 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    kept = side_records(out)
    assert len(kept) >= 3
    time.sleep(0.5)
    assert _tagged(value) == [], "a side or cell process outlived the command"
    resumed = [a for a in ab_args(out, "--rounds", "6", "--min-effect", "20%") if a not in ("--seed", "7")]
    code, _, stderr = run_ab([*resumed, "--resume"])  # no --seed: the run's own seed, hence its order
    assert code == 0, stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["ab"]["seed"] == 7
    final = [r for r in side_records(out) if r["status"] != "interrupted"]
    last = max(r["ab.round"] for r in final)  # 5 when the cell settled early
    assert last in (5, 6)
    assert sorted((r["ab.round"], r["side"]) for r in final) == [
        (r, s) for r in range(1, last + 1) for s in ("base", "new")
    ]
    for r in final:  # every measurement where seed 7 puts it, the resumed ones included
        (slot,) = [s for s in round_slots(7, r["ab.round"], [r["cell_id"]]) if s.side == r["side"]]
        assert (r["ab.slot"], r["ab.first"]) == (slot.slot, slot.first)


def test_a_cell_that_fails_on_the_new_side_is_a_regression_and_stops_taking_rounds(tmp_path: Path) -> None:
    out = tmp_path / "fails"
    faults = json.dumps({"float32/none/sdpa/no-ckpt/cache-auto": "raise"})
    code, stdout, stderr = run_ab(
        ab_args(out, "--rounds", "6", "--new-env", f"LOADBENCH_TEST_FAULTS={faults}")
    )
    assert code == 1, stderr[-3000:]
    assert "### Regressions (2)" in stdout and "| ok | error | RuntimeError: injected failure |" in stdout
    records = side_records(out)
    assert {r["ab.round"] for r in records} == {1, 2}  # failing every round: settled after two
    assert {(r["side"], r["status"]) for r in records} == {("base", "ok"), ("new", "error")}
