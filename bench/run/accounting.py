"""Where a run's time goes: the parent's stages, each cell's wall and measured time, and the harness share.

A benchmark harness that spends most of a run on itself wastes the user's time and hides it; this module
keeps the books so run.json (`time_accounting`, bench.schema.TIME_STAGES) and the report can show it. The
clock is the parent's: work that overlaps another stage (the template starting while the parent probes)
is charged only for the time the parent waited on it, so the stages add up to the wall time.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import psutil

from bench.schema import TIME_STAGES

# Timed load columns a cell records; each is a measured span of the cell (sampled ones: every sample).
LOAD_TIME_COLUMNS = (
    "load.read_floor_s",
    "load.tokenizer_s",
    "load.config_s",
    "load.model_first_s",
    "load.model_s",
    "load.first_forward_s",
)


def process_started_at() -> float:
    """time.time() when this process was created (the interpreter's own start-up counts as the run's).

    On Linux from the process's start in clock ticks since boot (/proc/self/stat) and the clock since boot:
    psutil's create_time adds those ticks to the boot time in whole seconds (/proc/stat btime), so it is
    early by up to a second, all of which the books would charge to `startup`."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        since = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - max(0.0, since)
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux
        pass
    try:
        return float(psutil.Process().create_time())
    except psutil.Error:
        return time.time()


def measured_seconds(record: Mapping[str, Any], windows: Iterable[Mapping[str, Any]]) -> float:
    """A cell's measured time: its timed loads plus its measured windows (warm-ups are not in them).

    A sampled load column counts every sample (`.samples`) when the record keeps them, else its value."""
    total = 0.0
    for name in LOAD_TIME_COLUMNS:
        samples = record.get(f"{name}.samples")
        if isinstance(samples, list) and samples:
            total += float(sum(samples))
        elif isinstance(record.get(name), (int, float)):
            total += float(record[name])
    return total + sum(float(w["end"]) - float(w["start"]) for w in windows)


class TimeAccounting:
    """The parent's stopwatch for one run: stages in TIME_STAGES, extra facts, and the books at the end."""

    def __init__(self, started_at: float | None = None) -> None:
        self.started_at = process_started_at() if started_at is None else started_at
        self.stages: dict[str, float] = {}
        self.facts: dict[str, Any] = {}
        self.mark("startup")

    def mark(self, stage: str) -> None:
        """Charge the time from process start to now to `stage` (only `startup` is measured that way)."""
        self.add(stage, max(0.0, time.time() - self.started_at))

    def add(self, stage: str, seconds: float) -> None:
        if stage not in TIME_STAGES:
            raise ValueError(f"time stage {stage!r} is not one of bench.schema.TIME_STAGES: {TIME_STAGES}.")
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def books(self, records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """run.json's `time_accounting` now: wall time, stages, the cells' wall and measured sums, and the
        harness share (wall minus measured, over wall). Records without cell times (skipped) add nothing."""
        wall = max(0.0, time.time() - self.started_at)
        cells = [r for r in records if isinstance(r.get("cell.wall_s"), (int, float))]
        cells_wall = sum(float(r["cell.wall_s"]) for r in cells)
        measured = sum(float(r.get("cell.measured_s") or 0.0) for r in cells)
        stages = {name: self.stages.get(name) for name in TIME_STAGES}
        return {
            "wall_s": wall,
            "stages_s": stages,
            "other_s": wall - sum(v for v in stages.values() if v is not None),
            "cells": len(cells),
            "cells_wall_s": cells_wall,
            "cells_measured_s": measured,
            "harness_s": wall - measured,
            "harness_share": (wall - measured) / wall if wall > 0 else None,
            **self.facts,
        }
