"""What a cell's body reports, typed: the events it emits while it runs and the outcome it ends with.

They are defined here, beside the cell body that builds them (bench.measure.cell), because a stage may
only import earlier ones; the run stage carries them over the worker pipe (bench.run.messages) and turns
an outcome into a record (bench.run.compose).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.schema import ALL_STATUSES

__all__ = ["CellEvent", "CellOutcome", "Emit", "ErrorInfo", "PhaseStarted", "WindowMeasured"]


@dataclass(frozen=True)
class PhaseStarted:
    """The cell entered a phase (load or a workload): the sampler and the progress display follow it."""

    phase: str


@dataclass(frozen=True)
class WindowMeasured:
    """A span of timed samples of one workload and the tokens processed in it (for energy per token)."""

    phase: str
    start: float  # time.monotonic()
    end: float
    tokens: int

    def as_window(self) -> dict[str, Any]:
        """The form bench.measure.sampler.energy_columns reads."""
        return dataclasses.asdict(self)


CellEvent = PhaseStarted | WindowMeasured
Emit = Callable[[CellEvent], None]


@dataclass(frozen=True)
class ErrorInfo:
    """The exception a failed cell ended with, cut to what a record keeps."""

    type: str
    message: str
    traceback: str

    def columns(self) -> dict[str, Any]:
        return {"error.type": self.type, "error.message": self.message, "error.traceback": self.traceback}


@dataclass(frozen=True)
class CellOutcome:
    """How a cell ended: a status (bench.schema), its reason, the metric columns and any error."""

    status: str
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None

    def __post_init__(self) -> None:
        if self.status not in ALL_STATUSES:
            raise ValueError(f"status {self.status!r} is not one of bench.schema's: {sorted(ALL_STATUSES)}.")

    def columns(self) -> dict[str, Any]:
        """The outcome's record columns, after the record head: metrics, then error.*."""
        out = dict(self.metrics)
        if self.error is not None:
            out.update(self.error.columns())
        return out
