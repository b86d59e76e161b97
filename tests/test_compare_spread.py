"""compare's run-to-run spread: what one cell moves between two runs of the same code (a shared machine's
speed wanders, and each cell sees its own stretch of it) is learnt from the metric's other cells, so two
runs of identical code pass while a slowdown of one cell, of half the cells or of the whole run is caught."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.analysis.compare import compare_runs
from bench.analysis.compare.judging import SPREAD_MIN_CELLS, shortest_half
from tests.test_compare import _in_memory, _record

TIMED_SECONDS = ("prefill.latency_s", "train.step_s", "decode.ttft_s", "decode.tpot_s")


def _runs_with_cell_drift(
    seed: int, drift: float, slow: dict[int, float] | None = None
) -> list[dict[str, Any]]:
    """24 cells with tight samples (1 % noise, 20 each), each cell moved as a whole by its own factor
    (lognormal, `drift`): within-run samples cannot see that move, the other cells can."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(24):
        factor = float(rng.lognormal(0.0, drift)) * (slow or {}).get(i, 1.0)
        records.append(_record(i, rng, sigma=0.01, slower=factor))
    return records


def test_shortest_half_is_a_normal_sd_and_ignores_a_change_of_exactly_half_the_values() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 0.05, 4001).tolist()
    assert shortest_half(values) == pytest.approx(0.05, rel=0.1)
    split = [0.0 + 0.001 * k for k in range(12)] + [0.26 + 0.001 * k for k in range(12)]
    assert shortest_half(split) < 0.01  # the MAD of the same values would be ~0.19


def test_two_runs_of_the_same_code_on_a_wandering_machine_pass_and_the_note_says_why() -> None:
    base = _in_memory(_runs_with_cell_drift(1, drift=0.06))
    new = _in_memory(_runs_with_cell_drift(2, drift=0.06))
    comparison = compare_runs(base, new)
    assert comparison.exit_code == 0
    assert any("Run-to-run spread of one cell" in note for note in comparison.notes)
    judged = [r for r in comparison.results if r.p is not None]
    assert judged and all(r.spread_needed is not None and r.spread_needed > 0.1 for r in judged)


def test_without_the_spread_the_same_pair_would_alarm() -> None:
    # The within-run test alone: every cell's 6 % move is "significant" with 20 tight samples.
    base = _in_memory(_runs_with_cell_drift(1, drift=0.06)[: SPREAD_MIN_CELLS - 1])
    new = _in_memory(_runs_with_cell_drift(2, drift=0.06)[: SPREAD_MIN_CELLS - 1])
    comparison = compare_runs(base, new)
    assert comparison.exit_code == 1
    assert any("cannot be estimated" in note for note in comparison.notes)


def _slowed(cells: list[int]) -> tuple[list[str], Any, set[tuple[str, str]]]:
    """(BASE's cell ids, the comparison, its flagged (cell, metric)) with `cells` of NEW 33 % slower."""
    base_records = _runs_with_cell_drift(1, drift=0.02)
    comparison = compare_runs(
        _in_memory(base_records),
        _in_memory(_runs_with_cell_drift(2, drift=0.02, slow=dict.fromkeys(cells, 1.33))),
    )
    flagged = {(r.base_cell_id, r.metric) for r in comparison.of("regression")}
    return [r["cell_id"] for r in base_records], comparison, flagged


@pytest.mark.parametrize("cells", [[5], list(range(24))])
def test_one_cell_and_the_whole_run_33_percent_slower_are_caught(cells: list[int]) -> None:
    ids, comparison, flagged = _slowed(cells)
    assert comparison.exit_code == 1
    for i in cells:
        for metric in TIMED_SECONDS:
            assert (ids[i], metric) in flagged, (i, metric)


def test_a_change_of_exactly_half_the_cells_does_not_hide_behind_the_spread() -> None:
    # Every other cell (all sdpa cells of a matrix, say) 33 % slower: the MAD of the log-changes would be
    # ~0.14 and nothing would be flagged; the shortest half is one of the two halves (its whole range, so
    # the spread is still overestimated ~2x and cells near the threshold can be missed: most are caught).
    half = list(range(0, 24, 2))
    ids, comparison, flagged = _slowed(half)
    assert comparison.exit_code == 1
    for metric in TIMED_SECONDS:
        caught = sum((ids[i], metric) in flagged for i in half)
        assert caught >= 6, (metric, caught)
    unchanged = {ids[i] for i in range(1, 24, 2)}
    assert not {cell for cell, _ in flagged} & unchanged
