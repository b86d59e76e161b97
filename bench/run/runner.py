"""Execute a plan: one isolated process per cell, forked from a warm template; timeouts and statuses.

The parent never imports CUDA state: it sleeps on the cells' pipes and process sentinels
(`multiprocessing.connection.wait`), never busy-waits, and writes each final record as it lands.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure.derived import derive
from bench.measure.probes import Budget
from bench.plan.matrix import Cell
from bench.run.progress import Progress
from bench.run.store import RunStore

TEMPLATE_MODULES = ["bench.run.template"]  # torch, transformers, peft, bitsandbytes; never CUDA
DEFAULT_TIMEOUT_S = {"cuda": 300.0, "cpu": 120.0}
_OOM_EVENTS = Path("/sys/fs/cgroup/memory.events")


def worker_environment() -> None:
    """Environment the template and its cells inherit: offline, and CUDA checks that do not poison fork."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def start_template() -> tuple[Any, float, str]:
    """Start the forkserver that holds the warm imports; returns (context, seconds, isolation mode).

    If a forked child finds CUDA already initialised by the template (a "bad fork"), cells could not
    use the GPU; then every cell gets a cold interpreter instead (slower, still isolated), and the
    mode says so.
    """
    worker_environment()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(TEMPLATE_MODULES)
    start = time.perf_counter()
    multiprocessing.forkserver.ensure_running()
    # ensure_running returns before the preload finishes; one trivial child waits for it.
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_fork_check, args=(send,))
    proc.start()
    send.close()
    bad_fork = recv.recv() if recv.poll(300) else True
    proc.join()
    elapsed = time.perf_counter() - start
    if bad_fork:
        return multiprocessing.get_context("spawn"), elapsed, "spawn: the template had initialised CUDA"
    return ctx, elapsed, "forkserver"


def _fork_check(conn: Any) -> None:
    import torch

    conn.send(bool(torch.cuda._is_in_bad_fork()))
    conn.close()


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


def record_skips(
    store: Any,
    cells: list[Cell],
    progress: Progress,
    config: dict[str, Any] | None = None,
    device: str = "cpu",
) -> None:
    """Write the final `skipped` record of every planned cell a rule skipped (once per run), with its
    memory estimate: that is how people plan for hardware they do not have."""
    done = store.final_cell_ids()
    host = socket.gethostname()
    for cell in cells:
        if cell.skip_reason and cell.cell_id not in done:
            record = {**cell.record("skipped", cell.skip_reason), "host": host}
            record.update(estimate_columns(cell, record, config, device))
            store.append(record)
            progress.cell_finished(cell, record)


def _no_nvml_columns() -> dict[str, Any]:
    """NVML columns on a host without NVML: null, with the reason."""
    reason = "NVML is not available on this host (no NVIDIA driver or GPU)"
    out: dict[str, Any] = {"mem.nvml_source": None, "mem.nvml_source.reason": reason}
    for phase in ("load", "prefill", "decode", "train"):
        for kind in ("device", "process"):
            out[f"mem.{phase}.nvml_{kind}_bytes"] = None
            out[f"mem.{phase}.nvml_{kind}_bytes.reason"] = reason
    for workload in ("prefill", "decode", "train"):
        out[f"energy.{workload}.j_per_token"] = None
        out[f"energy.{workload}.j_per_token.reason"] = reason
    return out


def run_task(ctx: Any, task: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    """Run a run-level task (calibration, quality reference) in a cell process: the parent never
    touches CUDA. The task's answer, or {"reason": ...} when it did not finish."""
    from bench.run import worker_entry

    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=worker_entry.main, args=(task, send))
    proc.start()
    send.close()
    result: dict[str, Any] = {"reason": f"the {task['kind']} task did not finish within {timeout_s:g} s"}
    if recv.poll(timeout_s):
        with contextlib.suppress(EOFError):
            result = recv.recv()
    proc.join(timeout=10)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    return result


def run_calibration(ctx: Any, lane: str | None, log: Path, timeout_s: float = 120.0) -> dict[str, Any]:
    """The calibration probe (bench.measure.calibrate) on a lane's GPU."""
    return run_task(ctx, {"kind": "calibrate", "visible_devices": lane, "log": str(log)}, timeout_s)


def run_quality_reference(
    ctx: Any, checkpoint: Path, lane: str | None, path: Path, log: Path
) -> dict[str, Any]:
    """The run's quality reference (bench.measure.quality), computed once before the cells and cached on disk."""
    task = {
        "kind": "quality_reference",
        "checkpoint_path": str(checkpoint),
        "path": str(path),
        "device": "cpu" if lane is None else "cuda",
        "visible_devices": lane,
        "log": str(log),
    }
    return run_task(ctx, task)


def estimate_columns(
    cell: Cell, record: dict[str, Any], config: dict[str, Any] | None, device: str
) -> dict[str, Any]:
    """mem.<phase>.estimate_bytes for every cell (skipped ones too), and for measured phases the error of
    the estimate against the measurement (CUDA: allocator peak; CPU: RSS growth over the baseline)."""
    if not config:
        return {}
    from bench.plan.estimate import estimate_cell

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
    result: dict[str, Any] | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunOptions:
    timeout_s: float | None = None
    budget: Budget = field(default_factory=Budget)
    lanes: list[str | None] = field(default_factory=lambda: [None])  # CUDA_VISIBLE_DEVICES per lane
    faults: dict[str, str] = field(default_factory=dict)  # test-only: cell_id or label -> fault
    samplers: dict[int, Any] = field(default_factory=dict)  # lane -> NvmlSampler (GPU lanes only)
    model_config: dict[str, Any] | None = None  # the checkpoint's config.json, for derived metrics
    calibration: dict[str, Any] | None = None
    quality_ref: str | None = None  # the run's cached quality reference (safetensors)


class Runner:
    """Runs cells through isolated workers and appends one final record per cell to the store."""

    def __init__(
        self, store: RunStore, checkpoint: Path, options: RunOptions, progress: Progress, ctx: Any
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

    # -- processes ---------------------------------------------------------------------------------
    def _start(self, cell: Cell, lane: int) -> Running:
        recv, send = self.ctx.Pipe(duplex=False)
        task = {
            "cell": cell.to_dict(),
            "checkpoint_path": str(self.checkpoint),
            "budget": vars(self.options.budget),
            "visible_devices": self.options.lanes[lane],
            "log": str(self.store.directory / "logs" / f"{cell.cell_id}.log"),
            "fault": self.options.faults.get(cell.cell_id) or self.options.faults.get(cell.label),
            "quality_ref": self.options.quality_ref,
        }
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
                if msg["event"] == "ready":
                    run.ready_at = msg["t"]
                elif msg["event"] == "phase":
                    run.phase = msg["phase"]
                    if run.lane in self.options.samplers:
                        self.options.samplers[run.lane].phase(run.phase)
                    self.progress.phase(run.cell, run.phase)
                elif msg["event"] == "window":
                    run.windows.append({k: v for k, v in msg.items() if k != "event"})
                elif msg["event"] == "result":
                    run.result = msg

    def _kill(self, run: Running) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            run.proc.kill()
        run.proc.join()

    def _death_status(self, run: Running) -> tuple[str, str]:
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
                return "oom", f"killed by the kernel OOM killer during {run.phase}"
            return "crashed", f"the cell's process died of {sig.name} during {run.phase}"
        return "crashed", f"the cell's process exited with code {code} during {run.phase} without a result"

    def _record(self, run: Running, status: str, reason: str | None, extra: dict[str, Any]) -> dict[str, Any]:
        record = run.cell.record(status, reason)
        record.update(extra)
        sampler = self.options.samplers.get(run.lane)
        if sampler is not None:
            record.update(sampler.end_cell(run.windows))
        else:
            record.update(_no_nvml_columns())
        if status == "ok" and self.options.model_config:
            record.update(derive(record, self.options.model_config, self.options.calibration))
        device = "cuda" if self.options.lanes[run.lane] is not None else "cpu"
        record.update(estimate_columns(run.cell, record, self.options.model_config, device))
        record.update(
            {
                "phase": run.phase,
                "host": self.hostname,
                "lane": run.lane,
                "started_at": run.started_at,
                "wall_s": time.monotonic() - run.dispatched,
                "isolation.startup_s": (run.ready_at - run.dispatched) if run.ready_at is not None else None,
                "log": str(Path("logs") / f"{run.cell.cell_id}.log"),
            }
        )
        if run.cell.dropped:
            for name, why in run.cell.dropped:
                record.setdefault(f"{name}.skipped_reason", why)
        return record

    def _settle(self, run: Running, now: float) -> dict[str, Any] | None:
        """The final record of a cell that has finished, died or overrun; None while it still runs."""
        self._drain(run)
        if run.result is not None:
            run.proc.join(timeout=10)
            if run.proc.exitcode is None:
                self._kill(run)
            msg = run.result
            extra = dict(msg.get("metrics") or {})
            if msg.get("error"):
                extra.update({f"error.{k}": v for k, v in msg["error"].items()})
            return self._record(run, msg["status"], msg.get("reason"), extra)
        if not run.proc.is_alive():
            run.proc.join()
            self._drain(run)
            if run.result is not None:
                return self._settle(run, now)
            status, reason = self._death_status(run)
            return self._record(run, status, reason, {})
        if now >= run.deadline:
            self._kill(run)
            reason = (
                f"no result within {self.timeout_s:g} s (phase {run.phase}); its process group was killed"
            )
            return self._record(run, "timeout", reason, {})
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
                self._finish(
                    run.cell,
                    self._record(run, "interrupted", "stopped by Ctrl-C; --resume runs it again", {}),
                )
                self.store.release(run.cell.cell_id)
            raise
        return ran
