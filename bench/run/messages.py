"""The worker pipe's protocol, typed: the tasks a parent sends a worker process and the events it answers.

A cell's process gets a CellTask and answers Ready, then the cell body's PhaseStarted and WindowMeasured
events (bench.measure.outcome), then one Finished. A run-level probe (calibration, quality reference)
gets its task and answers one ProbeAnswer. Everything here is a picklable dataclass: the multiprocessing
pipe and Ray carry them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.measure.outcome import CellOutcome, PhaseStarted, WindowMeasured
from bench.measure.probes import Budget
from bench.plan.matrix import Cell

__all__ = [
    "CalibrationTask",
    "CellTask",
    "DriftTask",
    "Event",
    "Finished",
    "NodeTask",
    "PhaseStarted",
    "ProbeAnswer",
    "Ready",
    "ReferenceTask",
    "Task",
    "WindowMeasured",
]


@dataclass(frozen=True)
class CellTask:
    """Run one cell: load its model from `checkpoint` and measure its workloads."""

    cell: Cell
    checkpoint: str
    budget: Budget
    visible_devices: str | None  # CUDA_VISIBLE_DEVICES of the lane; None on the CPU
    log: str
    quality_ref: str | None = None  # the run's cached quality reference (safetensors)
    quality_reason: str | None = None  # why there is none (--no-quality, timed out, ...)
    fault: str | None = None  # test-only (bench.run.faults)
    # The run's probe of bitsandbytes on this host (loader.host.probe_bitsandbytes's answer): an
    # unquantized cell reuses it instead of importing bitsandbytes (seconds) to learn the same facts.
    bitsandbytes: tuple[str | None, str | None, tuple[str, ...]] | None = None
    # Set: skip the untimed probes of which sdpa kernel ran (their columns null with this reason).
    kernels_reason: str | None = None


@dataclass(frozen=True)
class CalibrationTask:
    """Measure what the lane's GPU sustains (bench.measure.calibrate)."""

    visible_devices: str | None
    log: str


@dataclass(frozen=True)
class DriftTask:
    """Measure the fixed machine-speed probe (bench.measure.calibrate.drift_probe) on the lane's device."""

    visible_devices: str | None
    log: str


@dataclass(frozen=True)
class ReferenceTask:
    """Compute (or find cached) the quality reference of a checkpoint (bench.measure.quality)."""

    checkpoint: str
    path: str
    device: str  # "cpu" or "cuda"
    visible_devices: str | None
    log: str

    def as_mapping(self) -> dict[str, Any]:
        """The form bench.measure.quality.reference_task reads."""
        return {"checkpoint_path": self.checkpoint, "path": self.path, "device": self.device}


Task = CellTask | CalibrationTask | ReferenceTask | DriftTask


@dataclass(frozen=True)
class Ready:
    """The cell's process is up (time.monotonic()): the start-up cost of isolation ends here."""

    t: float


@dataclass(frozen=True)
class Finished:
    """The cell's outcome; the last message a cell's process sends."""

    outcome: CellOutcome


@dataclass(frozen=True)
class ProbeAnswer:
    """A probe task's answer: what run.json keeps of it, or {"reason": ...} when it failed."""

    values: dict[str, Any]


Event = Ready | PhaseStarted | WindowMeasured | Finished


@dataclass(frozen=True)
class NodeTask:
    """One cell sent by the Ray driver to a node, which finds its checkpoint and runs it there."""

    cell: Cell
    model: str
    fingerprint: str
    gpu: bool
    timeout_s: float | None
    budget: Budget
    fault: str | None = None  # test-only (bench.run.faults)
    quality: bool = True  # compute the quality reference on the node (False: --no-quality)
