"""Run one matrix over a Ray cluster with the same store, statuses and resume as the local executor.

Each runnable cell becomes a Ray task that asks for one GPU (or a whole node on a CPU cluster). On
its node the task sets the node up as the local executor does (bench.run.node) and runs the cell
through the same isolated worker (warm template, timeout, statuses, memory measurement), so the
numbers mean the same. Records come back to the driver, which alone writes the store. Ray is optional:
`pip install 'loadbench[ray]'`.
"""

from __future__ import annotations

import functools
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.measure.outcome import CellOutcome
from bench.measure.probes import Budget
from bench.plan.checkpoints import read_json
from bench.plan.matrix import Cell
from bench.run.compose import compose_record
from bench.run.faults import fault_for, faults_from_environment
from bench.run.memory_store import MemoryStore
from bench.run.messages import NodeTask
from bench.run.node import NodeSetup, gpu_samplers, node_checkpoint, prepare_node
from bench.run.progress import NullProgress, Progress
from bench.run.runner import DEFAULT_TIMEOUT_S, Runner, RunOptions, lease_for
from bench.run.store import RunStore

RAY_MISSING = (
    "--executor ray needs Ray, which is not installed; install it with pip install 'loadbench[ray]'."
)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BenchError(RAY_MISSING) from None
    return ray


def _log_dir() -> Path:
    log_dir = Path(tempfile.gettempdir()) / "loadbench-ray-logs"
    log_dir.mkdir(exist_ok=True)
    return log_dir


@functools.cache
def _node_setup(
    checkpoint: str, fingerprint: str, lane: str | None, quality: bool, timeout_s: float
) -> NodeSetup:
    """This Ray worker's setup for a checkpoint and lane, done once (bench.run.node)."""
    return prepare_node(Path(checkpoint), fingerprint, lane, _log_dir(), quality=quality, timeout_s=timeout_s)


def node_identity() -> dict[str, Any]:
    import ray

    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "node_host": socket.gethostname(),
    }


def run_on_node(task: NodeTask) -> dict[str, Any]:
    """The body of one cell's Ray task: find or build the checkpoint here, run the cell, return its record."""
    checkpoint, mismatch = node_checkpoint(task.model, task.fingerprint)
    if mismatch is not None:
        return compose_record(task.cell, CellOutcome("error", mismatch), trailer=node_identity())
    lane = os.environ.get("CUDA_VISIBLE_DEVICES") if task.gpu else None
    lanes = [lane]
    timeout = task.timeout_s or DEFAULT_TIMEOUT_S["cuda" if task.gpu else "cpu"]
    node = _node_setup(str(checkpoint), task.fingerprint, lane, task.quality, timeout)
    samplers = gpu_samplers(lanes)
    options = RunOptions(
        timeout_s=task.timeout_s,
        budget=task.budget,
        lanes=lanes,
        samplers=dict(samplers),
        model_config=read_json(checkpoint / "config.json"),
        calibration=node.calibration,
        quality_ref=node.quality_ref,
        quality_reason=node.quality_reason,
        faults={task.cell.cell_id: task.fault} if task.fault else {},
        trailer={**node_identity(), "isolation": node.isolation},
    )
    store = MemoryStore(_log_dir())
    try:
        Runner(store, checkpoint, options, NullProgress(), node.ctx).run([task.cell])
    finally:
        for sampler in samplers.values():
            sampler.stop()
    return store.records[-1]


def node_facts() -> dict[str, Any]:
    """A node's hardware, for the run's environment (probed on the node, CUDA untouched)."""
    from bench.plan.capabilities import probe_cached

    return {**node_identity(), **probe_cached().to_dict()}


class RayExecutor:
    """The driver: submits cells as Ray tasks, writes each record as it lands (bench.run.executor.Executor)."""

    def __init__(
        self,
        store: RunStore,
        model: str,
        fingerprint: str,
        progress: Progress,
        *,
        address: str | None,
        timeout_s: float | None,
        budget: Budget,
        quality: bool = True,
    ) -> None:
        self.store = store
        self.model = model
        self.fingerprint = fingerprint
        self.progress = progress
        self.address = address
        self.timeout_s = timeout_s
        self.budget = budget
        self.quality = quality
        self.faults = faults_from_environment()
        self._owns_ray = False  # True once this executor called ray.init: close shuts that cluster down

    # -- the Executor protocol ---------------------------------------------------------------------
    def start(self) -> None:
        self.store.set_meta("executor", {"kind": "ray", "address": self.address})

    def device(self) -> str:
        return "cuda" if self.gpu_cluster() else "cpu"

    def close(self) -> None:
        """Shut down the local Ray cluster this executor started (raylet, GCS, agents); a cluster given by
        --address, or one the caller had initialised, is left running."""
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False

    def summary(self) -> str:
        return "ray executor: each node forks cells from its own warm template"

    def run(self, cells: list[Cell]) -> int:
        ray = self._connect()
        self.store.set_meta("nodes", self.describe_nodes(ray))
        gpu = ray.cluster_resources().get("GPU", 0) > 0
        # On a CPU cluster a cell takes a whole node, so cells never share cores and skew each other's timings.
        node_cpus = min(n["Resources"].get("CPU", 1) for n in ray.nodes() if n.get("Alive"))
        remote = ray.remote(run_on_node)
        done = self.store.final_cell_ids()
        refs: dict[Any, Cell] = {}
        # Queued cells are leased too: the driver renews every lease while it waits (bench.run.claims).
        lease_s, heartbeat_s = lease_for(self.timeout_s or DEFAULT_TIMEOUT_S["cuda" if gpu else "cpu"])
        for cell in cells:
            if (
                cell.skip_reason is not None
                or cell.cell_id in done
                or not self.store.claim(cell.cell_id, lease_s)
            ):
                continue
            task = NodeTask(
                cell=cell,
                model=self.model,
                fingerprint=self.fingerprint,
                gpu=gpu,
                timeout_s=self.timeout_s,
                budget=self.budget,
                quality=self.quality,
                fault=fault_for(self.faults, cell),
            )
            resources = {"num_gpus": 1} if gpu else {"num_cpus": node_cpus}
            refs[remote.options(max_retries=1, retry_exceptions=False, **resources).remote(task)] = cell
            self.progress.cell_started(cell)
        ran = 0
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=heartbeat_s)
                self.store.refresh([c.cell_id for c in refs.values()], lease_s)
                for ref in ready:
                    cell = refs.pop(ref)
                    self._finish(cell, self._result(ray, ref, cell))
                    ran += 1
        except KeyboardInterrupt:
            for ref, cell in refs.items():
                ray.cancel(ref, force=True)
                interrupted = CellOutcome("interrupted", "stopped by Ctrl-C; --resume runs it again")
                self._finish(cell, compose_record(cell, interrupted))
            raise
        return ran

    # -- the cluster -------------------------------------------------------------------------------
    def _connect(self) -> Any:
        ray = import_ray()
        if self.address is None:
            # A local cluster: keep every Ray process on loopback (Ray's own switch for laptops), so
            # nothing listens on or talks to the machine's network address.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if not ray.is_initialized():
            self._owns_ray = True
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={
                    "env_vars": {
                        "PYTHONPATH": os.pathsep.join(
                            filter(
                                None, [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")]
                            )
                        )
                    }
                },
            )
        return ray

    def gpu_cluster(self) -> bool:
        return self._connect().cluster_resources().get("GPU", 0) > 0

    def describe_nodes(self, ray: Any) -> list[dict[str, Any]]:
        """Every alive node's hardware, probed by a task pinned to that node."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(num_cpus=0)(node_facts)
        refs = [
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote()
            for n in ray.nodes()
            if n.get("Alive")
        ]
        return ray.get(refs)

    def _result(self, ray: Any, ref: Any, cell: Cell) -> dict[str, Any]:
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:  # node lost, worker crashed: after Ray's one retry
            reason = (
                f"the cell's Ray task failed after one retry: {type(exc).__name__} "
                f"({str(exc).splitlines()[0][:300] if str(exc) else 'no message'})"
            )
            return compose_record(
                cell, CellOutcome("crashed", reason), trailer={"ray.error": type(exc).__name__}
            )

    def _finish(self, cell: Cell, record: dict[str, Any]) -> None:
        self.store.append(record)
        self.store.release(cell.cell_id)
        self.progress.cell_finished(cell, record)
