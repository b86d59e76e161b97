"""Test-only fault injection: a cell's process aborts, hangs or raises on purpose, so tests can check that
every failure gets its status and the matrix goes on.

Faults are named in the LOADBENCH_TEST_FAULTS environment variable of the run's parent process, a JSON
object from cell_id or label to fault; no spec, flag or RunRequest field sets them. The parent reads it
when it builds a cell's task (a forkserver child would see the server's environment, not the parent's).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

from bench.plan.matrix import Cell

FAULTS_ENV = "LOADBENCH_TEST_FAULTS"
FAULTS = ("abort", "sleep", "raise", "memoryerror", "oom")


def faults_from_environment() -> dict[str, str]:
    """The faults LOADBENCH_TEST_FAULTS names (none when it is unset)."""
    raw = os.environ.get(FAULTS_ENV)
    if not raw:
        return {}
    faults = json.loads(raw)
    unknown = sorted(set(faults.values()) - set(FAULTS))
    if unknown:
        raise ValueError(f"{FAULTS_ENV} names unknown fault {unknown[0]!r}; use one of: {', '.join(FAULTS)}.")
    return {str(k): str(v) for k, v in faults.items()}


def fault_for(faults: Mapping[str, str], cell: Cell) -> str | None:
    """A cell's fault, by cell_id or by label."""
    return faults.get(cell.cell_id) or faults.get(cell.label)


def inject(fault: str | None) -> None:
    """Run inside the cell's process, before the cell body, so a raised fault is classified like any failure."""
    if fault == "abort":
        os.abort()
    if fault == "sleep":
        time.sleep(3600)
    if fault == "raise":
        raise RuntimeError("injected failure")
    if fault == "memoryerror":
        raise MemoryError("injected MemoryError")
    if fault == "oom":
        import torch

        raise torch.OutOfMemoryError("injected CUDA out of memory")
