"""`loadbench compare BASE NEW`: regression verdicts between two run directories.

Each timed metric of each matched cell is judged from its samples (Mann-Whitney U, Benjamini-Hochberg over
the comparison, a minimum effect on the median); memory by the minimum effect alone; a cell that was ok in
BASE and fails in NEW is a regression too. Modules: runs (what is read of a run), matching (which cells pair
up, and whether two runs can be compared at all), stats (the tests), judging (verdicts), results (what was
found), rendering (Markdown and JSON). The command line is bench.commands.compare.
"""

from __future__ import annotations

from bench.analysis.compare.judging import MEM_ABS_FLOOR_BYTES, MIN_N, compare, compare_runs
from bench.analysis.compare.rendering import (
    JSON_FORMAT_VERSION,
    MARKDOWN_LIMIT,
    render,
    render_error,
    render_json,
    render_markdown,
    summary_line,
    to_dict,
)
from bench.analysis.compare.results import Comparison, MetricResult, StatusChange
from bench.analysis.compare.runs import RunData
from bench.analysis.compare.stats import bh_adjust, mann_whitney_u
from bench.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_REGRESSION, CompareError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_OK",
    "EXIT_REGRESSION",
    "JSON_FORMAT_VERSION",
    "MARKDOWN_LIMIT",
    "MEM_ABS_FLOOR_BYTES",
    "MIN_N",
    "CompareError",
    "Comparison",
    "MetricResult",
    "RunData",
    "StatusChange",
    "bh_adjust",
    "compare",
    "compare_runs",
    "mann_whitney_u",
    "render",
    "render_error",
    "render_json",
    "render_markdown",
    "summary_line",
    "to_dict",
]
