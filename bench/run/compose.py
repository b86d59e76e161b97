"""The one function that composes a cell's record, whatever its status (ok, failed, skipped, interrupted)
and whichever executor made it, so the JSONL stays flat and its columns keep their order.

A record is, in this order: the head (Cell.record: identity, status, reason, knobs); the outcome's
metric and error columns; for an attempted cell its NVML columns; derived metrics (ok cells); the
memory estimate and its error; the fit check's columns; the attempt's tail (phase, host, lane, times,
log); the reasons of dropped workloads; and the columns the executor adds last (on Ray: the node's
identity).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import CheckpointError
from bench.measure.derived import derive
from bench.measure.outcome import CellOutcome
from bench.plan.estimate import estimate_cell
from bench.plan.matrix import Cell
from bench.schema import PHASES

NO_NVML = "NVML is not available on this host (no NVIDIA driver or GPU)"


@dataclass(frozen=True)
class ModelFacts:
    """What derived metrics and the memory estimate need to know of the model and the device."""

    config: Mapping[str, Any] | None  # the checkpoint's config.json
    device: str  # "cpu" or "cuda"
    calibration: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Attempt:
    """How the runner saw one attempt at a cell: the record's tail."""

    phase: str  # the phase it was in when it ended
    host: str
    lane: int
    started_at: float  # time.time()
    wall_s: float
    startup_s: float | None  # dispatch to the worker's Ready: what isolation costs
    log: str  # relative to the run directory
    measured_s: float | None = None  # its timed loads plus measured windows (bench.run.accounting)


def no_nvml_columns() -> dict[str, Any]:
    """NVML columns on a host without NVML: null, with the reason."""
    out: dict[str, Any] = {"mem.nvml_source": None, "mem.nvml_source.reason": NO_NVML}
    for phase in PHASES:
        for kind in ("device", "process"):
            out[f"mem.{phase}.nvml_{kind}_bytes"] = None
            out[f"mem.{phase}.nvml_{kind}_bytes.reason"] = NO_NVML
    for workload in PHASES[1:]:  # the workload phases, in phase order
        out[f"energy.{workload}.j_per_token"] = None
        out[f"energy.{workload}.j_per_token.reason"] = NO_NVML
    return out


def estimate_columns(
    cell: Cell, record: Mapping[str, Any], config: Mapping[str, Any] | None, device: str
) -> dict[str, Any]:
    """mem.<phase>.estimate_bytes for every cell (skipped ones too), and for measured phases the error of
    the estimate against the measurement (CUDA: allocator peak; CPU: RSS growth over the baseline)."""
    if not config:
        return {}
    base = int(record.get("mem.baseline_rss_bytes") or 0)
    out: dict[str, Any] = dict(estimate_cell(cell, config, device, baseline_bytes=base))
    for phase in ("load", *cell.workloads):
        if device == "cuda":
            measured = record.get(f"mem.{phase}.torch_allocated_bytes")
            predicted = out.get(f"mem.{phase}.estimate_tensor_bytes")
        else:
            rss = record.get(f"mem.{phase}.rss_bytes")
            measured = rss - base if rss is not None and base else None
            predicted = out.get(f"mem.{phase}.estimate_bytes", 0) - base if base else None
        if measured and predicted is not None and measured > 0:
            out[f"mem.{phase}.estimate_error"] = predicted / measured - 1.0
    return out


# What reading the checkpoint's config.json for derived metrics and the estimate may raise on a bad value.
MODEL_FACT_ERRORS = (CheckpointError, ArithmeticError, LookupError, TypeError, ValueError)


def unreadable_config(outcome: CellOutcome, exc: Exception) -> dict[str, Any]:
    """The columns that replace a record's status when its config.json cannot be read: an ok cell becomes
    `error` (its numbers cannot be checked against the model), any other status keeps its own and says why
    it has no estimate."""
    why = f"the checkpoint's config.json cannot be used for the memory estimate and derived metrics: {exc}"
    if outcome.status != "ok":
        return {"reason": f"{outcome.reason}; {why}" if outcome.reason else why}
    return {"status": "error", "reason": why, "error.type": type(exc).__name__, "error.message": str(exc)}


def compose_record(
    cell: Cell,
    outcome: CellOutcome,
    *,
    model: ModelFacts | None = None,
    attempt: Attempt | None = None,
    nvml: Mapping[str, Any] | None = None,
    host: str | None = None,
    trailer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A cell's record.

    model: adds derived metrics (ok cells) and the memory estimate; attempt: the tail of a cell that ran,
    with `nvml` its sampler's columns (None: NVML is missing here, and the columns say so); host: where a
    record without an attempt was made (a skipped cell); trailer: columns the executor adds last.
    """
    record = cell.record(outcome.status, outcome.reason)
    record.update(outcome.columns())
    if attempt is None and host is not None:
        record["host"] = host
    if attempt is not None:
        record.update(nvml if nvml is not None else no_nvml_columns())
    if model is not None:
        try:
            extra: dict[str, Any] = {}
            if outcome.status == "ok" and model.config:
                extra.update(derive(record, model.config, model.calibration))
            extra.update(estimate_columns(cell, {**record, **extra}, model.config, model.device))
        except MODEL_FACT_ERRORS as exc:  # a wrong-typed config.json value fails this cell, not the run
            record.update(unreadable_config(outcome, exc))
        else:
            record.update(extra)
    record.update(dict(cell.fit))  # the plan's fit check: predicted peak against what the cell had
    if attempt is not None:
        record.update(
            {
                "phase": attempt.phase,
                "host": attempt.host,
                "lane": attempt.lane,
                "started_at": attempt.started_at,
                "wall_s": attempt.wall_s,
                "isolation.startup_s": attempt.startup_s,
                "cell.wall_s": attempt.wall_s,
                "cell.measured_s": attempt.measured_s,
                "log": attempt.log,
            }
        )
        for name, why in cell.dropped:
            record.setdefault(f"{name}.skipped_reason", why)
    if trailer:
        record.update(trailer)
    return record


def log_path(cell: Cell) -> str:
    """A cell's log, relative to the run directory (what its record's `log` column says)."""
    return str(Path("logs") / f"{cell.cell_id}.log")
