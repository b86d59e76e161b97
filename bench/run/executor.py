"""The Executor protocol, and the local executor: this host's GPUs (one lane each) or its CPU.

The session drives any executor the same way: `start` (set the node up, write its run.json entries),
`device` (where cells run, for the skipped cells' memory estimates), `run` the cells, `close`. An
executor writes final records to the store as they land; the session never sees a cell's process.
The Ray executor (bench.run.ray_executor) implements the same protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from bench.measure.probes import Budget
from bench.measure.sampler import NvmlSampler, gpu_state
from bench.plan.matrix import Cell
from bench.plan.planning import Plan
from bench.run.faults import faults_from_environment
from bench.run.node import drift_record, gpu_samplers, prepare_node, run_drift_probe
from bench.run.progress import Progress
from bench.run.runner import DEFAULT_TIMEOUT_S, Runner, RunOptions
from bench.run.store import RunStore
from bench.schema import DRIFT_KEY


class Executor(Protocol):
    """Runs a plan's cells somewhere and writes one final record per cell to the store."""

    def start(self) -> None:
        """Get ready to run (template, quality reference, calibration; or the cluster); before any record."""

    def device(self) -> str:
        """Where cells run: "cuda" or "cpu"."""

    def run(self, cells: list[Cell]) -> int:
        """Run every runnable cell without a final record; returns how many ran."""

    def close(self) -> None:
        """Release what `start` took (sampler threads); records what the run left behind."""

    def summary(self) -> str:
        """One line for the run's summary: how cells were isolated."""


@dataclass
class RunSettings:
    """What every executor is given by the session."""

    store: RunStore
    plan: Plan
    budget: Budget
    timeout_s: float | None
    progress: Progress
    model_config: dict[str, Any]  # the checkpoint's config.json
    quality: bool = True  # compute the quality reference (False: --no-quality)
    bitsandbytes: tuple[str | None, str | None, tuple[str, ...]] | None = None  # the host probe's answer


class LocalExecutor:
    """This host: a warm template, one lane per visible GPU (or one CPU lane), cells forked from it."""

    def __init__(self, settings: RunSettings, lanes: list[str | None]) -> None:
        self.settings = settings
        self.lanes = lanes
        self.samplers: dict[int, NvmlSampler] = {}
        self.runner: Runner | None = None
        self.how = ""
        self.ctx: Any = None
        self.drift_start: dict[str, Any] | None = None
        self.waited_s: dict[str, float] = {}  # start's time per stage (bench.schema.TIME_STAGES)
        self.closed_s: dict[str, float] = {}  # close's

    def start(self) -> None:
        store, plan = self.settings.store, self.settings.plan
        logs = store.directory / "logs"
        timeout = self.settings.timeout_s or DEFAULT_TIMEOUT_S[self.device()]
        node = prepare_node(
            plan.checkpoint,
            plan.fingerprint,
            self.lanes[0],
            logs,
            quality=self.settings.quality,
            timeout_s=timeout,
        )
        self.waited_s = dict(node.waited_s)
        self.samplers = gpu_samplers(self.lanes)
        store.set_meta("executor", {"kind": "local", "lanes": self.lanes})
        store.set_meta("template_startup_s", node.template_s)
        store.set_meta("isolation", node.isolation)
        store.set_meta("quality_reference", node.quality_reference)
        if node.calibration is not None:
            store.set_meta("calibration", node.calibration)
            store.set_meta("gpu_state_before", self._gpu_states())
        options = RunOptions(
            timeout_s=self.settings.timeout_s,
            budget=self.settings.budget,
            lanes=self.lanes,
            samplers=dict(self.samplers),
            model_config=self.settings.model_config,
            calibration=node.calibration,
            quality_ref=node.quality_ref,
            quality_reason=node.quality_reason,
            faults=faults_from_environment(),
            bitsandbytes=self.settings.bitsandbytes,
        )
        self.runner = Runner(store, plan.checkpoint, options, self.settings.progress, node.ctx)
        # The machine-speed probe just before the first cell, and again after the last (close).
        self.ctx = node.ctx
        probed = time.perf_counter()
        self.drift_start = run_drift_probe(node.ctx, self.lanes[0], logs / "drift.log")
        self.waited_s["drift"] = time.perf_counter() - probed
        store.set_meta(DRIFT_KEY, drift_record(self.drift_start, None))
        self.how = f"worker template ({node.isolation}) started in {node.template_s:.2f} s"
        template_log = logs / "template.log"
        if template_log.is_file() and template_log.stat().st_size:  # kept out of the terminal, not hidden
            self.how += f"; library messages at import: {template_log}"

    def device(self) -> str:
        return "cpu" if self.lanes[0] is None else "cuda"

    def run(self, cells: list[Cell]) -> int:
        if self.runner is None:
            raise RuntimeError("LocalExecutor.run before start")
        return self.runner.run(cells)

    def close(self) -> None:
        if self.drift_start is not None:
            probed = time.perf_counter()
            end = run_drift_probe(
                self.ctx, self.lanes[0], self.settings.store.directory / "logs" / "drift.log"
            )
            self.closed_s["drift"] = time.perf_counter() - probed
            self.settings.store.set_meta(DRIFT_KEY, drift_record(self.drift_start, end))
        for sampler in self.samplers.values():
            sampler.stop()
        if self.samplers:
            self.settings.store.set_meta("gpu_state_after", self._gpu_states())

    def summary(self) -> str:
        return self.how

    def _gpu_states(self) -> dict[int, Any]:
        return {lane: gpu_state(s.nvml, s.handle) for lane, s in self.samplers.items()}
