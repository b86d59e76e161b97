"""pytest integration: run a loadbench matrix under pytest-benchmark, so a CI job gets pytest-benchmark's own
`--benchmark-json`, `--benchmark-autosave`, storage and `--benchmark-compare` on loadbench's measurements.

    pytest --pyargs bench.pytest_matrix --loadbench-preset gpu-quick --benchmark-json out.json

The matrix runs once per session through the normal runner (isolated workers, statuses); each
(cell, timed metric) is one test whose benchmark stats are the samples the worker measured, never a
re-timing inside pytest. Cells that did not end ok are skipped with their status and reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.schema import FINAL_STATUSES
from bench.schema import METRICS as REGISTRY

# The sampled timed metrics in seconds (the unit pytest-benchmark stores), in registry order.
METRICS = tuple(m.name for m in REGISTRY.values() if m.sampled and m.unit == "s")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loadbench")
    group.addoption("--loadbench-preset", help="matrix preset to run (bench/presets)")
    group.addoption("--loadbench-spec", help="matrix spec YAML to run")
    group.addoption("--loadbench-out", default="runs/pytest", help="run directory (resumed if it exists)")
    group.addoption("--loadbench-budget", type=float, default=None, help="sampling seconds per metric")


def _spec(config: pytest.Config) -> Any:
    from bench.plan.matrix import MatrixSpec, load_preset

    if config.getoption("--loadbench-spec"):
        return MatrixSpec.from_yaml(config.getoption("--loadbench-spec"))
    if config.getoption("--loadbench-preset"):
        return load_preset(config.getoption("--loadbench-preset"))
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `loadbench_case` over (cell, metric) of the planned matrix."""
    if "loadbench_case" not in metafunc.fixturenames:
        return
    spec = _spec(metafunc.config)
    if spec is None:
        metafunc.parametrize(
            "loadbench_case",
            [
                pytest.param(
                    None,
                    marks=pytest.mark.skip(
                        reason="no matrix: pass --loadbench-preset NAME or --loadbench-spec FILE"
                    ),
                )
            ],
        )
        return
    from bench.plan.capabilities import probe_cached
    from bench.plan.planning import make_plan

    plan = make_plan(spec, probe_cached().host)
    cases = [
        (cell.cell_id, cell.label, metric)
        for cell in plan.cells
        for metric in METRICS
        if metric.split(".")[0] in cell.workloads
    ]
    metafunc.parametrize("loadbench_case", cases, ids=[f"{label}:{metric}" for _, label, metric in cases])


@pytest.fixture(scope="session")
def loadbench_records(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """Run the matrix once (resuming an existing run directory) and return the final records by cell_id."""
    from bench.run.session import RunRequest, run_matrix
    from bench.run.store import RunStore

    spec = _spec(request.config)
    out = Path(request.config.getoption("--loadbench-out"))
    run_matrix(
        RunRequest(
            spec, out=out, resume=True, budget_s=request.config.getoption("--loadbench-budget"), live=False
        )
    )
    return {r["cell_id"]: r for r in RunStore.open(out).records() if r["status"] in FINAL_STATUSES}


def feed_samples(benchmark: Any, samples: list[float], extra: dict[str, Any]) -> None:
    """Hand samples measured elsewhere to pytest-benchmark as one round each."""
    stats = benchmark._make_stats(1)
    for sample in samples:
        stats.update(sample)
    benchmark._mode = "loadbench samples"
    benchmark.extra_info.update(extra)


@pytest.fixture
def loadbench_case(request: pytest.FixtureRequest) -> Any:
    return request.param


def check_cell(
    loadbench_case: tuple[str, str, str], loadbench_records: dict[str, dict[str, Any]], benchmark: Any
) -> None:
    """The body of a generated benchmark test: skip non-ok cells with their reason, else feed the samples."""
    cell_id, label, metric = loadbench_case
    record = loadbench_records.get(cell_id)
    if record is None:
        pytest.fail(f"{label}: no final record in the run directory")
    if record["status"] != "ok":
        pytest.skip(f"{label}: {record['status']}: {record.get('reason')}")
    samples = record.get(f"{metric}.samples")
    if not samples:
        pytest.skip(
            f"{label}: {metric} was not measured: {record.get(metric + '.reason') or record.get(metric.split('.')[0] + '.skipped_reason')}"
        )
    benchmark.group = metric
    feed_samples(
        benchmark,
        samples,
        {"cell_id": cell_id, "label": label, "metric": metric, "noisy": record.get(f"{metric}.noisy")},
    )
