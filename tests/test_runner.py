"""The matrix runner, for real on the CPU: isolated cells, fault statuses, resume, locking, progress."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.cli import main
from bench.plan.matrix import MatrixSpec, Shape
from bench.run.faults import FAULTS_ENV
from bench.run.session import RunRequest, run_matrix
from bench.run.store import FINAL_STATUSES, RunStore
from tests.subprocesses import interruptible

ROOT = Path(__file__).resolve().parents[1]


def small_spec(model: Path, **changes) -> MatrixSpec:
    base = {
        "model": str(model),
        "dtype": ("float32", "bfloat16"),
        "attn": ("eager", "sdpa"),
        "workloads": ("prefill",),
        "shape": Shape(batch=1, seq=16, new_tokens=2),
        "name": "small",
    }
    return MatrixSpec(**{**base, **changes})


def final_records(out: Path) -> list[dict]:
    return [r for r in RunStore.open(out).records() if r["status"] in FINAL_STATUSES]


def by_label(records: list[dict]) -> dict[str, dict]:
    return {r["label"]: r for r in records}


def test_each_fault_gets_its_status_and_the_matrix_goes_on(
    tiny_llama, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = small_spec(tiny_llama, quant=("none", "8bit"))
    faults = {
        "float32/none/eager/no-ckpt/cache-auto": "abort",
        "float32/none/sdpa/no-ckpt/cache-auto": "sleep",
        "float32/8bit/eager/no-ckpt/cache-auto": "raise",
        "float32/8bit/sdpa/no-ckpt/cache-auto": "memoryerror",
        "bfloat16/none/eager/no-ckpt/cache-auto": "oom",
    }
    out = tmp_path / "run"
    monkeypatch.setenv(FAULTS_ENV, json.dumps(faults))
    run_matrix(RunRequest(spec, out=out, timeout_s=4, budget_s=0.1, live=False))
    records = by_label(final_records(out))
    assert len(records) == 8
    abort = records["float32/none/eager/no-ckpt/cache-auto"]
    assert abort["status"] == "crashed" and "SIGABRT" in abort["reason"]
    sleep = records["float32/none/sdpa/no-ckpt/cache-auto"]
    assert sleep["status"] == "timeout" and "within 4 s" in sleep["reason"]
    raised = records["float32/8bit/eager/no-ckpt/cache-auto"]
    assert raised["status"] == "error" and raised["reason"] == "RuntimeError: injected failure"
    assert "injected failure" in raised["error.traceback"]
    assert records["float32/8bit/sdpa/no-ckpt/cache-auto"]["status"] == "oom"
    assert records["bfloat16/none/eager/no-ckpt/cache-auto"]["status"] == "oom"
    ok = [r for r in records.values() if r["status"] == "ok"]
    assert len(ok) == 3  # every cell after a failure still ran
    for r in ok:
        assert r["prefill.tokens_per_s"] > 0 and r["prefill.tokens_per_s.n"] >= 5
        assert r["load.model_s"] > 0 and r["load.tokenizer_s"] > 0 and r["load.first_forward_s"] > 0
        assert r["mem.load.rss_bytes"] > 0 and r["threads"] == 1
        assert r["mem.load.torch_allocated_bytes"] is None and r["mem.load.torch_allocated_bytes.reason"]


def test_threads_are_read_back(tiny_llama, tmp_path) -> None:
    out = tmp_path / "run"
    spec = small_spec(tiny_llama, dtype=("float32",), attn=("sdpa",), threads=2)
    run_matrix(RunRequest(spec, out=out, budget_s=0.1, live=False))
    (record,) = final_records(out)
    assert record["status"] == "ok" and record["threads"] == 2


def _collector_state(conn) -> None:
    import gc

    conn.send((gc.isenabled(), gc.get_freeze_count(), "torch" in sys.modules))
    conn.close()


def test_cells_fork_from_a_frozen_template_with_the_collector_on() -> None:
    # the template pauses the collector while it imports (bench.run.template.gc_pause); a cell must find it
    # running again, with the template's objects frozen so that no collection of the cell walks them
    from bench.run.node import begin_template, start_template, template_modules

    begin_template(template_modules(["none"]))
    ctx, _, mode = start_template()
    assert mode == "forkserver"
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_collector_state, args=(send,))
    proc.start()
    send.close()
    enabled, frozen, has_torch = recv.recv()
    proc.join()
    assert enabled and has_torch
    assert frozen > 100_000  # torch and transformers: hundreds of thousands of objects


def test_corrupt_checkpoint_ends_the_cell_as_error(tiny_llama, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "run"
    run_matrix(RunRequest(small_spec(broken, dtype=("float32",), attn=("sdpa",)), out=out, live=False))
    (record,) = final_records(out)
    assert record["status"] == "error"
    assert record["reason"].startswith(f"weights file '{weights}' is corrupt")


def test_unknown_axis_value_is_one_sentence_before_anything_runs(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["run", "--dtype", "float64", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("loadbench: dtype='float64' is not allowed; use one or more of:")
    assert "\n" not in err
    assert not out.exists()


def test_unwritable_output_refused_before_the_first_cell(tiny_llama, tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = main(
        [
            "run",
            "--model",
            str(tiny_llama),
            "--dtype",
            "float32",
            "--attn",
            "sdpa",
            "--quant",
            "none",
            "--grad-ckpt",
            "off",
            "--out",
            str(blocker / "run"),
            "--no-live",
        ]
    )
    assert code == 2
    captured = capsys.readouterr()
    assert "loadbench:" in captured.err and str(blocker / "run") in captured.err
    assert "[1/" not in captured.out


# -- runner processes killed or interrupted, and two runners on one directory ----------------------

RUNNER_SCRIPT = """
import json, os, sys
from pathlib import Path
from bench.plan.matrix import MatrixSpec, Shape
from bench.run.session import RunRequest, run_matrix
os.environ["LOADBENCH_TEST_FAULTS"] = json.dumps({faults!r})
spec = MatrixSpec(model={model!r}, dtype=("float32", "bfloat16"), attn=("eager", "sdpa"),
                  workloads=("prefill",), shape=Shape(1, 16, 2), name="small")
try:
    run_matrix(RunRequest(spec, out=Path({out!r}), resume=True, budget_s=0.1, min_samples=2, live=False))
except KeyboardInterrupt:
    sys.exit(130)
"""


def spawn_runner(model: Path, out: Path, faults: dict[str, str]) -> subprocess.Popen:
    script = textwrap.dedent(RUNNER_SCRIPT).format(model=str(model), out=str(out), faults=faults)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=interruptible,
    )


def wait_for_records(out: Path, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = out / "records.jsonl"
        if path.exists() and len(path.read_bytes().splitlines()) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} records after {timeout} s")


def assert_each_cell_once(out: Path, expected: int) -> list[dict]:
    raw = (out / "records.jsonl").read_bytes().splitlines()
    records = [json.loads(line) for line in raw]  # no torn line: every line parses
    finals = [r for r in records if r["status"] in FINAL_STATUSES]
    counts = Counter(r["cell_id"] for r in finals)
    assert len(counts) == expected and set(counts.values()) == {1}, counts
    return records


@pytest.mark.slow
def test_sigkill_of_the_runner_then_resume_runs_every_cell_once(tiny_llama, tmp_path) -> None:
    out = tmp_path / "run"
    proc = spawn_runner(tiny_llama, out, {"bfloat16/none/eager/no-ckpt/cache-auto": "sleep"})
    wait_for_records(out, 2)
    time.sleep(0.5)  # the third cell is now asleep mid-flight
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    run_matrix(RunRequest(small_spec(tiny_llama), out=out, resume=True, budget_s=0.1, live=False))
    records = assert_each_cell_once(out, 4)
    assert {r["status"] for r in records} == {"ok"}


@pytest.mark.slow
def test_ctrl_c_records_interrupted_and_resume_continues(tiny_llama, tmp_path) -> None:
    out = tmp_path / "run"
    proc = spawn_runner(tiny_llama, out, {"float32/none/sdpa/no-ckpt/cache-auto": "sleep"})
    wait_for_records(out, 1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    interrupted = [r for r in RunStore.open(out).records() if r["status"] == "interrupted"]
    assert [r["label"] for r in interrupted] == ["float32/none/sdpa/no-ckpt/cache-auto"]
    run_matrix(RunRequest(small_spec(tiny_llama), out=out, resume=True, budget_s=0.1, live=False))
    assert_each_cell_once(out, 4)


@pytest.mark.slow
def test_two_runners_on_one_directory_never_duplicate(tiny_llama, tmp_path) -> None:
    out = tmp_path / "run"
    procs = [spawn_runner(tiny_llama, out, {}) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stdout.read().decode()[-2000:]
    assert_each_cell_once(out, 4)


@pytest.mark.slow
def test_plain_progress_when_not_a_terminal(tiny_llama, tmp_path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "LOADBENCH_CACHE": str(tiny_llama.parent.parent)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "run",
            "--model",
            str(tiny_llama),
            "--dtype",
            "float32",
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
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[1/2] ok" in result.stdout and "[2/2] ok" in result.stdout
    assert "\x1b[" not in result.stdout.split("loadbench summary")[0]  # no live display codes in logs
    assert f"run directory: {out}" in result.stdout.replace("\n", "")


def test_vram_limit_turns_a_fitting_cell_into_oom(tiny_llama, tmp_path) -> None:
    """CPU variant: RLIMIT_DATA on the cell's process; the same cell fits without the limit."""
    spec = small_spec(
        tiny_llama,
        dtype=("float32",),
        attn=("sdpa",),
        workloads=("prefill", "train"),
        shape=Shape(batch=4, seq=256, new_tokens=2),
    )
    free, capped = tmp_path / "free", tmp_path / "capped"
    run_matrix(RunRequest(spec, out=free, budget_s=0.1, live=False))
    limited = spec.with_overrides(vram_limit_bytes=400 << 20)
    run_matrix(RunRequest(limited, out=capped, budget_s=0.1, live=False))
    (fits,) = final_records(free)
    (oom,) = final_records(capped)
    assert fits["status"] == "ok" and fits["vram_limit_bytes"] is None
    assert oom["status"] == "oom" and oom["vram_limit_bytes"] == 400 << 20
    assert "allocate memory" in oom["reason"] or oom["reason"].startswith("MemoryError")
    assert RunStore.open(capped).meta["spec"]["vram_limit_bytes"] == 400 << 20
    assert fits["cell_id"] != oom["cell_id"]  # a capped measurement is a different cell


def test_shards_then_merge_cover_the_matrix_once(tiny_llama, tmp_path) -> None:
    """What a CI matrix job does: `--shard I/N` per runner, then `loadbench merge` in a final job."""
    spec = small_spec(tiny_llama, quant=("none", "8bit"))
    shards = []
    for i in (1, 2, 3):
        out = tmp_path / f"shard{i}"
        run_matrix(RunRequest(spec, out=out, shard=f"{i}/3", budget_s=0.1, live=False))
        shards.append(out)
    per_shard = [set(statuses_by_id(s)) for s in shards]
    assert all(a.isdisjoint(b) for a in per_shard for b in per_shard if a is not b)
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, shards), "--out", str(merged)]) == 0
    cells = statuses_by_id(merged)
    assert len(cells) == 8 and set(cells) == set().union(*per_shard)
    other = tmp_path / "other"
    run_matrix(RunRequest(small_spec(tiny_llama), out=other, shard="1/2", budget_s=0.1, live=False))
    assert main(["merge", str(shards[0]), str(other), "--out", str(tmp_path / "bad")]) == 2  # different specs


def statuses_by_id(out: Path) -> dict[str, str]:
    return {r["cell_id"]: r["status"] for r in final_records(out)}
