"""bench.analysis.export, checked against the real tools: pytest-benchmark's own JSON and its `compare` command."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.stats import Stats

from bench.analysis import export
from bench.commands import export as export_command
from tests.subprocesses import inner_env
from tests.test_report import H100_RUN, grid_records, make_record, make_run


def _pytest_benchmark_command() -> str:
    """The console script installed beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("pytest-benchmark")
    found = str(beside) if beside.exists() else shutil.which("pytest-benchmark")
    if found is None:
        pytest.fail("the pytest-benchmark console script is missing (pip install pytest-benchmark)")
    return found


@pytest.fixture
def grid_run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "grid", grid_records())


@pytest.fixture(scope="module")
def real_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A JSON file written by pytest-benchmark itself, to hold our layout against."""
    root = tmp_path_factory.mktemp("layout")
    (root / "test_tiny.py").write_text("def test_tiny(benchmark):\n    benchmark(sum, range(10))\n")
    out = root / "real.json"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tiny.py"]
    command += [
        "--benchmark-enable",
        f"--benchmark-json={out}",
        "--benchmark-max-time=0.01",
        "-c",
        "/dev/null",
    ]
    subprocess.run(command, cwd=root, check=True, capture_output=True, timeout=120, env=inner_env())
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    "samples", [[0.5], [2.0, 1.0], [3.0, 1.0, 2.0], [4, 1, 3, 2], [5, 3, 1, 4, 2.5], list(range(1, 52))]
)
def test_stats_equal_pytest_benchmarks_own(samples: list[float]) -> None:
    theirs = Stats()
    for value in samples:
        theirs.update(float(value))
    ours = export.benchmark_stats(samples)
    assert {k: ours[k] for k in Stats.fields} == pytest.approx(theirs.as_dict())


@pytest.mark.slow
def test_layout_has_every_key_pytest_benchmark_writes(grid_run: Path, real_layout: dict[str, Any]) -> None:
    ours = json.loads(export.export_pytest_benchmark(grid_run).read_text())
    assert set(real_layout) <= set(ours)
    assert set(real_layout["benchmarks"][0]) <= set(ours["benchmarks"][0])
    assert set(ours["benchmarks"][0]["stats"]) == set(real_layout["benchmarks"][0]["stats"])
    assert set(real_layout["commit_info"]) <= set(ours["commit_info"])


def test_one_benchmark_per_ok_cell_and_timed_metric_from_its_samples(grid_run: Path) -> None:
    document = json.loads(export.export_pytest_benchmark(grid_run).read_text())
    benchmarks = document["benchmarks"]
    # 8 ok cells; skipped/oom/error export nothing; these records' single load time has no samples
    workloads = [m for m in export.TIMED_METRICS if m != "load.model_s"]
    assert len(benchmarks) == 8 * len(workloads)
    assert {b["group"] for b in benchmarks} == set(workloads)
    records = {r["cell_id"]: r for r in grid_records()}
    for bench in benchmarks:
        record = records[bench["extra_info"]["cell_id"]]
        metric = bench["group"]
        assert bench["stats"]["data"] == record[f"{metric}.samples"]
        assert bench["stats"]["median"] == pytest.approx(record[metric])
        assert bench["name"].startswith(f"{metric}[tiny-llama/{record['label']}/")
    assert len({b["name"] for b in benchmarks}) == len(benchmarks)


def test_a_metric_without_samples_is_left_out(tmp_path: Path) -> None:
    record = make_record()
    record["decode.tpot_s.samples"] = None
    run = make_run(tmp_path / "run", [record])
    groups = [b["group"] for b in export.pytest_benchmark(*_frame_and_meta(run))["benchmarks"]]
    assert groups == ["prefill.latency_s", "train.step_s", "decode.ttft_s"]


def test_load_time_is_a_benchmark_from_its_samples(tmp_path: Path) -> None:
    loads = [0.21, 0.2, 0.19, 0.2, 0.22, 0.2]
    record = make_record(**{"load.model_s": 0.2, "load.model_s.samples": loads, "load.model_s.n": 6})
    run = make_run(tmp_path / "run", [record])
    benchmarks = export.pytest_benchmark(*_frame_and_meta(run))["benchmarks"]
    load = next(b for b in benchmarks if b["group"] == "load.model_s")
    assert load["stats"]["data"] == loads and load["stats"]["rounds"] == 6
    assert load["stats"]["median"] == pytest.approx(0.2)
    assert load["name"].startswith("load.model_s[tiny-llama/")
    smaller = export.github_action_benchmark(_frame_and_meta(run)[0])["smaller"]
    assert sum(e["name"].startswith("load.model_s [") for e in smaller) == 1  # one point, not two


def _frame_and_meta(run: Path) -> tuple[Any, dict[str, Any]]:
    from bench.analysis import report
    from bench.run import store

    return report.to_frame(run), store.RunStore.open(run).meta


def test_pytest_benchmark_compare_reads_two_exports(grid_run: Path, tmp_path: Path) -> None:
    """The real `pytest-benchmark compare` command, on a synthetic run and the committed H100 run."""
    first = export.export_pytest_benchmark(grid_run, tmp_path / "grid.json")
    second = export.export_pytest_benchmark(H100_RUN, tmp_path / "h100.json")
    result = subprocess.run(
        [_pytest_benchmark_command(), "compare", str(first), str(second), "--group-by=group"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Failed to load" not in result.stdout + result.stderr
    for name in (
        "train.step_s[tiny-llama/float32/none/sdpa/no-ckpt/cache-auto/b2-s64]",
        "decode.tpot_s[qwen2.5-1.5b/bfloat16/nf4/sdpa/ckpt/cache-auto/b4-s512]",
    ):
        assert name in result.stdout
    assert "benchmark 'prefill.latency_s'" in result.stdout


def test_github_action_benchmark_writes_two_files(grid_run: Path, tmp_path: Path) -> None:
    paths = export.export_github_action_benchmark(grid_run, tmp_path / "gh.json")
    assert {k: p.name for k, p in paths.items()} == {"bigger": "gh.bigger.json", "smaller": "gh.smaller.json"}
    bigger = json.loads(paths["bigger"].read_text())
    smaller = json.loads(paths["smaller"].read_text())
    assert len(bigger) == 8 * 3 and {e["unit"] for e in bigger} == {"tok/s"}
    assert {e["unit"] for e in smaller} == {"s", "bytes"}
    for entry in bigger + smaller:
        assert set(entry) <= {"name", "unit", "value", "range", "extra"} and {"name", "unit", "value"} <= set(
            entry
        )
        assert isinstance(entry["value"], float)
    records = {r["cell_id"]: r for r in grid_records()}
    entry = next(e for e in bigger if e["name"].startswith("train.tokens_per_s"))
    record = records[entry["extra"].split(";")[0].removeprefix("cell ")]
    assert entry["value"] == record["train.tokens_per_s"]
    assert (
        entry["range"]
        == f"p10–p90 {record['train.tokens_per_s.p10']:.6g}–{record['train.tokens_per_s.p90']:.6g}"
    )
    assert any(e["name"].startswith("mem.train.rss_bytes [") for e in smaller)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="loadbench")
    export_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *argv])
    return args.func(args)


def test_cli_defaults_into_the_run_and_refuses_a_non_run(
    grid_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(str(grid_run), "--format", "pytest-benchmark") == 0
    assert (grid_run / "pytest-benchmark.json").is_file()
    assert _cli(str(grid_run), "--format", "github-action-benchmark") == 0
    assert (grid_run / "github-action-benchmark.bigger.json").is_file()
    capsys.readouterr()
    assert _cli(str(tmp_path / "missing"), "--format", "pytest-benchmark") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("loadbench: ") and "not a loadbench run directory" in err and "\n" not in err
