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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.measure.outcome import CellOutcome, PhaseStarted, WindowMeasured
from bench.measure.probes import Budget
from bench.plan.matrix import Cell
from bench.run.accounting import measured_seconds
from bench.run.compose import Attempt, ModelFacts, compose_record, log_path
from bench.run.faults import fault_for
from bench.run.messages import CellTask, Finished, Ready
from bench.run.node import _fork_check as _fork_check  # re-exported: tests/perf time the template
from bench.run.node import start_template as start_template
from bench.run.progress import Progress

DEFAULT_TIMEOUT_S = {"cuda": 300.0, "cpu": 120.0}
# A claim is a lease of a few cell timeouts, renewed every HEARTBEAT_S while its cell runs; a runner that
# found cells held by another runner polls every POLL_S until they have final records or their lease expires.
LEASE_TIMEOUTS = 3
HEARTBEAT_S = 30.0
POLL_S = 2.0


def lease_for(timeout_s: float) -> tuple[float, float]:
    """(lease, heartbeat interval) for cells with this timeout: a live runner renews long before expiry."""
    lease = LEASE_TIMEOUTS * timeout_s
    return lease, min(HEARTBEAT_S, lease / 6)


_FIND_MAX_PROBES = 16  # bench.measure.findmax.PROBE_LIMIT (not imported: the parent never imports torch)
_OOM_EVENTS = Path("/sys/fs/cgroup/memory.events")


class RecordSink(Protocol):
    """What the runner needs of a store: the run's RunStore, or a node's in-memory one on Ray."""

    @property
    def directory(self) -> Path: ...
    def append(self, record: dict[str, Any]) -> bool: ...
    def claim(self, cell_id: str, lease_s: float = ...) -> bool: ...
    def refresh(self, cell_ids: Iterable[str], lease_s: float = ...) -> None: ...
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
    bitsandbytes: tuple[str | None, str | None, tuple[str, ...]] | None = None  # the run's probe of it
    kernels_reason: str | None = None  # set: cells skip the sdpa kernel probes (an ab side after round 1)
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
        self.lease_s, self.heartbeat_s = lease_for(self.timeout_s)
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
            measured_s=measured_seconds(outcome.metrics, run.windows),
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
            bitsandbytes=self.options.bitsandbytes,
            kernels_reason=self.options.kernels_reason,
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
        # a --find-max cell runs up to PROBE_LIMIT probes (and the at-max measurement) in its time
        timeout = self.timeout_s * (_FIND_MAX_PROBES + 1) if cell.find_max else self.timeout_s
        return Running(cell, proc, recv, lane, now, now + timeout, time.time(), oom_before)

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
            reason = f"no result within {run.deadline - run.dispatched:g} s (phase {run.phase}); its process group was killed"
            return self._record(run, CellOutcome("timeout", reason))
        return None

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, cells: list[Cell]) -> int:
        """Run every runnable cell without a final record; returns how many ran.

        A cell another runner holds is waited for, not skipped: it ends with that runner's record, or its
        lease expires and this runner takes it over, so no cell is left unrun while a runner is alive."""
        done = self.store.final_cell_ids()
        pending = deque(c for c in cells if c.skip_reason is None and c.cell_id not in done)
        held: list[Cell] = []  # claimed by another runner when we tried
        running: dict[int, Running] = {}
        ran = 0
        beat = time.monotonic()
        try:
            while pending or running or held:
                for lane in range(len(self.options.lanes)):
                    while lane not in running and pending:
                        cell = pending.popleft()
                        if self.store.claim(cell.cell_id, self.lease_s):
                            running[lane] = self._start(cell, lane)
                        elif cell.cell_id not in self.store.final_cell_ids():
                            held.append(cell)
                if not running:
                    if held:
                        pending.extend(self._still_held(held))
                        held = []
                    continue
                waitables = [r.conn for r in running.values()] + [r.proc.sentinel for r in running.values()]
                next_event = min(r.deadline for r in running.values()) - time.monotonic()
                wait = max(0.0, min(next_event, beat + self.heartbeat_s - time.monotonic()))
                multiprocessing.connection.wait(waitables, timeout=wait)
                now = time.monotonic()
                if now - beat >= self.heartbeat_s:
                    self.store.refresh([r.cell.cell_id for r in running.values()], self.lease_s)
                    beat = now
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

    def _still_held(self, held: list[Cell]) -> list[Cell]:
        """After a pause, the held cells that still lack a final record (to be claimed again)."""
        time.sleep(POLL_S)
        done = self.store.final_cell_ids()
        return [cell for cell in held if cell.cell_id not in done]
