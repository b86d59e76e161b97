"""`loadbench ab` as a CI gate on this machine, with real runs of the 4-cell CPU sweep (issue 20's targets).

A benchmark, not a unit test: it measures the machine as much as the code. scripts/ab_power.py runs the same
rows and prints the README's table; this test runs them through the script's functions and asserts:
  - A/A: at most 1 of N ab runs exits 1, and at most 1 % of judged timed metrics are called changed;
  - a new side 10 % slower in compute is caught in >= 95 % of runs, 10 % slower loads in >= 90 %;
  - an ab run costs at most 2.5x the wall time of a plain run of the sweep.
N is LOADBENCH_AB_RUNS (default 10): about 25 minutes on a quiet 2-core machine.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.perf
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ab_power.py"
RUNS = int(os.environ.get("LOADBENCH_AB_RUNS", "10"))


def power() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ab_power", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    script, out = power(), tmp_path_factory.mktemp("ab-power")
    return {
        "aa": [script.ab(out / f"aa-{i}", seed=i + 1) for i in range(RUNS)],
        "plain": script.plain_runs(out / "plain", RUNS + 1),
        **{
            name: [script.ab(out / f"{name}-{i}", seed=i + 101, slowdown=s) for i in range(RUNS)]
            for name, s in script.SLOWDOWNS.items()
        },
    }


def test_a_a_runs_pass(benchmark: Any, rows: dict[str, list[dict[str, Any]]]) -> None:
    aa = benchmark.pedantic(lambda: rows["aa"], rounds=1, iterations=1)
    exits = sum(r["exit"] == 1 for r in aa)
    changed, judged = sum(r["changed"] for r in aa), sum(r["judged"] for r in aa)
    benchmark.extra_info.update(exits=exits, changed=changed, judged=judged)
    assert exits <= 1 and changed <= 0.01 * judged, (exits, changed, judged)


@pytest.mark.parametrize(("name", "target"), [("compute", 0.95), ("load", 0.90)])
def test_a_ten_percent_slowdown_is_caught(
    benchmark: Any, rows: dict[str, list[dict[str, Any]]], name: str, target: float
) -> None:
    runs = benchmark.pedantic(lambda: rows[name], rounds=1, iterations=1)
    caught = sum(r["exit"] == 1 for r in runs) / len(runs)
    benchmark.extra_info.update(caught=caught)
    assert caught >= target, [r["regressed"] for r in runs]


def test_an_ab_run_costs_at_most_two_and_a_half_plain_runs(
    benchmark: Any, rows: dict[str, list[dict[str, Any]]]
) -> None:
    ratio = benchmark.pedantic(
        lambda: (
            statistics.median(r["wall_s"] for r in rows["aa"])
            / statistics.median(r["wall_s"] for r in rows["plain"])
        ),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(ratio=ratio)
    assert ratio <= 2.5, ratio
