"""The pytest plugin: a matrix under pytest-benchmark, with its own JSON, storage and compare."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import pytest_plugin
from bench.schema import METRICS
from tests.subprocesses import inner_env


@pytest.mark.slow
def test_matrix_under_pytest_benchmark(tiny_llama, tmp_path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"model: {tiny_llama}\ndtype: [float32]\nquant: [none]\nattn: [eager, sdpa]\n"
        "workloads: [prefill, decode]\nshape: {batch: 1, seq: 16, new_tokens: 3}\n"
    )
    out_json = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--pyargs",
        "bench.pytest_matrix",
        "--loadbench-spec",
        str(spec),
        "--loadbench-out",
        str(tmp_path / "run"),
        "--loadbench-budget",
        "0.1",
        "--benchmark-only",
        f"--benchmark-json={out_json}",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=inner_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    data = json.loads(out_json.read_text())
    names = sorted(b["param"] for b in data["benchmarks"])
    assert len(names) == 2 * 3  # 2 cells × (prefill latency, decode ttft, decode tpot)
    assert "float32/none/sdpa/no-ckpt/cache-auto:prefill.latency_s" in names
    records = {
        json.loads(line)["cell_id"]: json.loads(line) for line in (tmp_path / "run" / "records.jsonl").open()
    }
    for bench in data["benchmarks"]:
        record = records[bench["extra_info"]["cell_id"]]
        samples = record[f"{bench['extra_info']['metric']}.samples"]
        assert bench["stats"]["rounds"] == len(samples)
        assert abs(bench["stats"]["min"] - min(samples)) < 1e-12  # the worker's samples, not a re-timing
    compare = shutil.which("pytest-benchmark") or str(Path(sys.executable).parent / "pytest-benchmark")
    again = tmp_path / "again.json"
    shutil.copy(out_json, again)
    shown = subprocess.run([compare, "compare", str(out_json), str(again)], capture_output=True, text=True)
    assert shown.returncode == 0 and "prefill.latency_s" in shown.stdout


@pytest.mark.slow
def test_without_a_matrix_it_skips_with_the_reason(tmp_path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--pyargs",
            "bench.pytest_matrix",
            "--benchmark-only",
        ],
        cwd=tmp_path,
        env=inner_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert "no matrix: pass --loadbench-preset NAME or --loadbench-spec FILE" in result.stdout


def test_benchmarked_metrics_are_the_registrys_sampled_seconds() -> None:
    """pytest-benchmark stores seconds: the plugin feeds every sampled metric in seconds, and only those."""
    assert pytest_plugin.METRICS == (
        "load.model_s",
        "prefill.latency_s",
        "train.step_s",
        "decode.ttft_s",
        "decode.tpot_s",
    )
    assert all(METRICS[m].sampled and METRICS[m].unit == "s" for m in pytest_plugin.METRICS)
