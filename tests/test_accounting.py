"""The time accounting: a cell's measured time, the run's books and the report's section."""

from __future__ import annotations

import time

import pytest

from bench.analysis.report.timing import time_section
from bench.run.accounting import TimeAccounting, measured_seconds
from bench.schema import TIME_ACCOUNTING_KEY, TIME_STAGES


def test_measured_seconds_adds_loads_samples_and_windows() -> None:
    record = {
        "load.read_floor_s": 0.5,
        "load.tokenizer_s": 0.25,
        "load.model_s": 9.0,  # a median: its samples are what was spent
        "load.model_s.samples": [1.0, 2.0],
        "load.first_forward_s": None,  # not measured: adds nothing
        "prefill.latency_s": 99.0,  # inside a window: never counted twice
    }
    windows = [{"start": 10.0, "end": 11.5}, {"start": 20.0, "end": 20.25}]
    assert measured_seconds(record, windows) == pytest.approx(0.5 + 0.25 + 3.0 + 1.5 + 0.25)
    assert measured_seconds({}, []) == 0.0


def test_books_add_up_to_the_wall_time() -> None:
    clock = TimeAccounting(started_at=time.time() - 1.0)
    with clock.stage("probe"):
        time.sleep(0.01)
    clock.add("cells", 0.5)
    records = [
        {"cell.wall_s": 0.3, "cell.measured_s": 0.2},
        {"cell.wall_s": 0.2, "cell.measured_s": 0.1},
        {"status": "skipped"},  # a skipped cell never ran: no times
    ]
    books = clock.books(records)
    assert set(books["stages_s"]) == set(TIME_STAGES)
    assert books["stages_s"]["startup"] == pytest.approx(1.0, abs=0.05)
    assert books["stages_s"]["probe"] >= 0.01
    assert books["stages_s"]["calibration"] is None
    spent = sum(v for v in books["stages_s"].values() if v is not None) + books["other_s"]
    assert spent == pytest.approx(books["wall_s"])
    assert books["cells"] == 2
    assert books["cells_measured_s"] == pytest.approx(0.3)
    assert books["harness_share"] == pytest.approx((books["wall_s"] - 0.3) / books["wall_s"])


def test_an_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="TIME_STAGES"):
        TimeAccounting().add("lunch", 1.0)


def test_report_section_shows_the_stages_and_the_share() -> None:
    clock = TimeAccounting(started_at=time.time() - 4.0)
    clock.add("template", 2.0)
    text = time_section({TIME_ACCOUNTING_KEY: clock.books([{"cell.wall_s": 1.0, "cell.measured_s": 1.0}])})
    assert "## Where the time went" in text
    assert "| template | 2.00 | 50% |" in text
    assert "harness's own share of the wall time is 75%" in text
    assert time_section({}) == ""  # runs from before the accounting render without the section
