"""Execute cells on one node: one isolated process per cell, forked from a warm template; timeouts and
statuses.

The parent never imports CUDA state: it sleeps on the cells' pipes and process sentinels
(`multiprocessing.connection.wait`), never busy-waits, and writes each final record as it lands.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.measure.outcome import CellOutcome, PhaseStarted, WindowMeasured
from bench.measure.probes import Budget
from bench.plan.matrix import Cell
from bench.run.compose import Attempt, ModelFacts, compose_record, log_path
from bench.run.faults import fault_for
from bench.run.messages import CellTask, Finished, Ready
from bench.run.node import _fork_check as _fork_check  # re-exported: tests/perf time the template
from bench.run.node import start_template as start_template
from bench.run.progress import Progress

DEFAULT_TIMEOUT_S = {"cuda": 300.0, "cpu": 120.0}
_OOM_EVENTS = Path("/sys/fs/cgroup/memory.events")


class RecordSink(Protocol):
    """What the runner needs of a store: the run's RunStore, or a node's in-memory one on Ray."""

    @property
    def directory(self) -> Path: ...
    def append(self, record: dict[str, Any]) -> bool: ...
    def claim(self, cell_id: str) -> bool: ...
    def release(self, cell_id: str) -> None: ...
    def final_cell_ids(self) -> set[str]: ...


def _oom_kills() -> int | None:
    """The cgroup's OOM-kill counter, to tell a kernel OOM kill from any other SIGKILL."""
    try:
        for line in _OOM_EVENTS.read_text().splitlines():
            key, value = line.split()
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


@dataclass
class Running:
    """A cell in flight: its process, pipe, lane and what it has told us so far."""

    cell: Cell
    proc: Any
    conn: Any
    lane: int
    dispatched: float
    deadline: float
    started_at: float
    oom_before: int | None
    ready_at: float | None = None
    phase: str = "starting"
    outcome: CellOutcome | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunOptions:
    timeout_s: float | None = None
    budget: Budget = field(default_factory=Budget)
    lanes: list[str | None] = field(default_factory=lambda: [None])  # CUDA_VISIBLE_DEVICES per lane
    samplers: dict[int, Any] = field(default_factory=dict)  # lane -> NvmlSampler (GPU lanes only)
    model_config: dict[str, Any] | None = None  # the checkpoint's config.json, for derived metrics
    calibration: dict[str, Any] | None = None
    quality_ref: str | None = None  # the run's cached quality reference (safetensors)
    quality_reason: str | None = None  # why the run has no reference (the cells' quality.reason)
    faults: dict[str, str] = field(default_factory=dict)  # test-only: cell_id or label -> fault
    trailer: dict[str, Any] = field(default_factory=dict)  # columns every record ends with (Ray: the node)


class Runner:
    """Runs cells through isolated workers and appends one final record per cell to the store."""

    def __init__(
        self, store: RecordSink, checkpoint: Path, options: RunOptions, progress: Progress, ctx: Any
    ) -> None:
        self.store = store
        self.checkpoint = checkpoint
        self.options = options
        self.progress = progress
        self.ctx = ctx
        self.hostname = socket.gethostname()
        self.timeout_s = (
            options.timeout_s or DEFAULT_TIMEOUT_S["cuda" if options.lanes[0] is not None else "cpu"]
        )
        (store.directory / "logs").mkdir(exist_ok=True)

    # -- records -----------------------------------------------------------------------------------
    def _finish(self, cell: Cell, record: dict[str, Any]) -> None:
        self.store.append(record)
        self.progress.cell_finished(cell, record)

    def _record(self, run: Running, outcome: CellOutcome) -> dict[str, Any]:
        sampler = self.options.samplers.get(run.lane)
        device = "cuda" if self.options.lanes[run.lane] is not None else "cpu"
        attempt = Attempt(
            phase=run.phase,
            host=self.hostname,
            lane=run.lane,
            started_at=run.started_at,
            wall_s=time.monotonic() - run.dispatched,
            startup_s=(run.ready_at - run.dispatched) if run.ready_at is not None else None,
            log=log_path(run.cell),
        )
        return compose_record(
            run.cell,
            outcome,
            model=ModelFacts(self.options.model_config, device, self.options.calibration),
            attempt=attempt,
            nvml=sampler.end_cell(run.windows) if sampler is not None else None,
            trailer=self.options.trailer,
        )

    # -- processes ---------------------------------------------------------------------------------
    def _start(self, cell: Cell, lane: int) -> Running:
        recv, send = self.ctx.Pipe(duplex=False)
        task = CellTask(
            cell=cell,
            checkpoint=str(self.checkpoint),
            budget=self.options.budget,
            visible_devices=self.options.lanes[lane],
            log=str(self.store.directory / log_path(cell)),
            quality_ref=self.options.quality_ref,
            quality_reason=self.options.quality_reason,
            fault=fault_for(self.options.faults, cell),
        )
        from bench.run import worker_entry

        oom_before = _oom_kills()
        now = time.monotonic()
        proc = self.ctx.Process(target=worker_entry.main, args=(task, send), daemon=False)
        proc.start()
        send.close()
        if lane in self.options.samplers:
            self.options.samplers[lane].begin_cell(proc.pid)
        self.progress.cell_started(cell)
        return Running(cell, proc, recv, lane, now, now + self.timeout_s, time.time(), oom_before)

    def _drain(self, run: Running) -> None:
        with contextlib.suppress(EOFError, OSError):
            while run.conn.poll():
                msg = run.conn.recv()
                if isinstance(msg, Ready):
                    run.ready_at = msg.t
                elif isinstance(msg, PhaseStarted):
                    run.phase = msg.phase
                    if run.lane in self.options.samplers:
                        self.options.samplers[run.lane].phase(run.phase)
                    self.progress.phase(run.cell, run.phase)
                elif isinstance(msg, WindowMeasured):
                    run.windows.append(msg.as_window())
                elif isinstance(msg, Finished):
                    run.outcome = msg.outcome

    def _kill(self, run: Running) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            run.proc.kill()
        run.proc.join()

    def _death(self, run: Running) -> CellOutcome:
        code = run.proc.exitcode
        if code is not None and code < 0:
            sig = signal.Signals(-code)
            after = _oom_kills()
            if (
                sig == signal.SIGKILL
                and run.oom_before is not None
                and after is not None
                and after > run.oom_before
            ):
                return CellOutcome("oom", f"killed by the kernel OOM killer during {run.phase}")
            return CellOutcome("crashed", f"the cell's process died of {sig.name} during {run.phase}")
        return CellOutcome(
            "crashed", f"the cell's process exited with code {code} during {run.phase} without a result"
        )

    def _settle(self, run: Running, now: float) -> dict[str, Any] | None:
        """The final record of a cell that has finished, died or overrun; None while it still runs."""
        self._drain(run)
        if run.outcome is not None:
            run.proc.join(timeout=10)
            if run.proc.exitcode is None:
                self._kill(run)
            return self._record(run, run.outcome)
        if not run.proc.is_alive():
            run.proc.join()
            self._drain(run)
            if run.outcome is not None:
                return self._settle(run, now)
            return self._record(run, self._death(run))
        if now >= run.deadline:
            self._kill(run)
            reason = (
                f"no result within {self.timeout_s:g} s (phase {run.phase}); its process group was killed"
            )
            return self._record(run, CellOutcome("timeout", reason))
        return None

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, cells: list[Cell]) -> int:
        """Run every runnable cell without a final record; returns how many ran."""
        done = self.store.final_cell_ids()
        pending = deque(c for c in cells if c.skip_reason is None and c.cell_id not in done)
        running: dict[int, Running] = {}
        ran = 0
        try:
            while pending or running:
                for lane in range(len(self.options.lanes)):
                    while lane not in running and pending:
                        cell = pending.popleft()
                        if self.store.claim(cell.cell_id):
                            running[lane] = self._start(cell, lane)
                if not running:
                    break
                waitables = [r.conn for r in running.values()] + [r.proc.sentinel for r in running.values()]
                timeout = max(0.0, min(r.deadline for r in running.values()) - time.monotonic())
                multiprocessing.connection.wait(waitables, timeout=timeout)
                now = time.monotonic()
                for lane, run in list(running.items()):
                    record = self._settle(run, now)
                    if record is not None:
                        del running[lane]
                        self._finish(run.cell, record)
                        self.store.release(run.cell.cell_id)
                        ran += 1
        except KeyboardInterrupt:
            for run in running.values():
                self._kill(run)
                interrupted = CellOutcome("interrupted", "stopped by Ctrl-C; --resume runs it again")
                self._finish(run.cell, self._record(run, interrupted))
                self.store.release(run.cell.cell_id)
            raise
        return ran
