"""The test module `pytest --pyargs bench.pytest_matrix --loadbench-preset NAME` runs (see bench.pytest_plugin)."""

from __future__ import annotations

from typing import Any

from bench.pytest_plugin import check_cell


def test_loadbench(loadbench_case: Any, loadbench_records: Any, benchmark: Any) -> None:
    check_cell(loadbench_case, loadbench_records, benchmark)
