"""The issue's done-when for compare, on run directories: a second run of the same configuration passes,
a copy 33 % slower in every timed metric fails, and the power script's simulation says what it claims."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from bench.commands.compare import main
from bench.errors import EXIT_OK, EXIT_REGRESSION
from tests.test_compare import _records, _write_run

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_power.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_power", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_slowed_33_percent_fails_and_a_second_run_of_the_same_configuration_passes(
    tmp_path: Path,
) -> None:
    power = _script()
    base = _write_run(tmp_path / "a", _records(seed=1, sigma=0.05))
    second = _write_run(tmp_path / "b", _records(seed=2, sigma=0.05))
    slowed = power.slowed_copy(second, tmp_path / "slow", 1.33)
    record = json.loads((slowed / "records.jsonl").read_text().splitlines()[0])
    original = json.loads((second / "records.jsonl").read_text().splitlines()[0])
    assert record["prefill.latency_s.samples"][0] == pytest.approx(
        original["prefill.latency_s.samples"][0] * 1.33
    )
    assert record["prefill.tokens_per_s"] == pytest.approx(original["prefill.tokens_per_s"] / 1.33)
    assert record["mem.load.rss_bytes"] == original["mem.load.rss_bytes"]  # memory is not a timing
    assert main([str(base), str(second)]) == EXIT_OK
    assert main([str(base), str(slowed)]) == EXIT_REGRESSION


def test_one_quiet_metric_of_one_cell_20_percent_slower_is_caught(tmp_path: Path) -> None:
    power = _script()
    base = _write_run(tmp_path / "a", _records(seed=1, sigma=0.03))
    second = _write_run(tmp_path / "b", _records(seed=2, sigma=0.03))
    cell = json.loads((second / "records.jsonl").read_text().splitlines()[3])["cell_id"]
    one = power.slowed_copy(second, tmp_path / "one", 1.20, [(cell, "train.step_s")])
    assert main([str(base), str(one)]) == EXIT_REGRESSION


@pytest.mark.slow
def test_the_simulation_meets_the_targets_at_ten_samples_and_shows_why_five_cannot() -> None:
    power = _script()
    shape = [dict.fromkeys(power.TIMED, (10, 0.05)) for _ in range(power.CELLS)]
    false_alarms, one, whole = power.simulate(shape, trials=40, seed=1)
    assert false_alarms <= 0.025 and one >= 0.9 and whole == 1.0
    shape = [dict.fromkeys(power.TIMED, (5, 0.05)) for _ in range(power.CELLS)]
    _, one, whole = power.simulate(shape, trials=10, seed=1)
    assert one == 0.0 and whole == 1.0  # 5 vs 5 samples: the smallest p is 2/252, never below alpha/family
