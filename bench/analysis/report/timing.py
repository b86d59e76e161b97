"""The report's "Where the time went" section: run.json's `time_accounting` as a short table.

Kept apart from the workload tables: it describes the harness, not the cells' measurements.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.schema import TIME_ACCOUNTING_KEY, TIME_STAGES


def time_section(meta: Mapping[str, Any]) -> str:
    """Markdown for the run's time accounting; empty when run.json has none (runs from before it)."""
    books = meta.get(TIME_ACCOUNTING_KEY)
    if not isinstance(books, Mapping) or not books.get("wall_s"):
        return ""
    wall = float(books["wall_s"])
    stages = books.get("stages_s") or {}
    lines = ["", "## Where the time went", "", "| stage | seconds | share |", "|---|---:|---:|"]
    for name in (*TIME_STAGES, "other"):
        value = books.get("other_s") if name == "other" else stages.get(name)
        if isinstance(value, (int, float)) and value > 0.0005:
            lines.append(f"| {name} | {value:.2f} | {value / wall:.0%} |")
    lines.append(f"| **wall** | {wall:.2f} | 100% |")
    share = books.get("harness_share")
    lines += [
        "",
        f"Cells measured {books.get('cells_measured_s', 0.0):.2f} s (their loads and measured windows) of "
        f"{books.get('cells_wall_s', 0.0):.2f} s in {books.get('cells', 0)} cell(s); the harness's own share "
        f"of the wall time is {share:.0%}."
        if isinstance(share, (int, float))
        else "",
    ]
    return "\n".join(line for line in lines if line is not None) + "\n"
