"""Run one matrix over a Ray cluster with the same store, statuses and resume as the local executor.

Each runnable cell becomes a Ray task that asks for one GPU (or a whole node on a CPU cluster). On
its node the task runs the cell through the same isolated worker as the local executor (warm template,
timeout, statuses, memory measurement), so the numbers mean the same. Records come back to the driver,
which alone writes the store. Ray is optional: `pip install 'loadbench[ray]'`.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from bench.measure.probes import Budget
from bench.plan.matrix import Cell
from bench.run.progress import NullProgress, Progress
from bench.run.store import RunStore
from loader.errors import LoadConfigError

RAY_MISSING = (
    "--executor ray needs Ray, which is not installed; install it with pip install 'loadbench[ray]'."
)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise LoadConfigError(RAY_MISSING) from None
    return ray


class MemoryStore:
    """What a Runner needs of a store, kept in memory on a node: the driver owns the real one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.records: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> bool:
        self.records.append(record)
        return True

    def claim(self, cell_id: str) -> bool:
        return True

    def release(self, cell_id: str) -> None:
        pass

    def final_cell_ids(self) -> set[str]:
        return set()


@functools.cache
def _node_template() -> tuple[Any, str]:
    """The warm template of this Ray worker process, started once."""
    from bench.run.runner import start_template

    ctx, _, isolation = start_template()
    return ctx, isolation


@functools.cache
def _node_quality_reference(checkpoint: str, fingerprint: str, lane: str | None, log_dir: str) -> str | None:
    """This node's copy of the run's quality reference (computed once per node and checkpoint)."""
    from bench.run.runner import run_quality_reference

    ctx, _ = _node_template()
    path = Path(log_dir) / f"quality-reference-{fingerprint}.safetensors"
    return run_quality_reference(ctx, Path(checkpoint), lane, path, Path(log_dir) / "quality.log").get("path")


@functools.cache
def _node_calibration(lane: str | None, log_dir: str) -> dict[str, Any] | None:
    if lane is None:
        return None
    from bench.run.runner import run_calibration

    ctx, _ = _node_template()
    return run_calibration(ctx, lane, Path(log_dir) / "calibration.log")


def node_identity() -> dict[str, Any]:
    import ray

    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "node_host": socket.gethostname(),
    }


def run_on_node(payload: dict[str, Any]) -> dict[str, Any]:
    """The body of one cell's Ray task: find or build the checkpoint here, run the cell, return its record."""
    from bench.plan.checkpoints import checkpoint_fingerprint
    from bench.plan.planning import resolve_model
    from bench.run.runner import Runner, RunOptions
    from bench.run.session import gpu_samplers

    cell = Cell.from_dict(payload["cell"])
    checkpoint = resolve_model(payload["model"])  # same cache key on every node: a hit or a build
    if checkpoint_fingerprint(checkpoint) != payload["fingerprint"]:
        reason = (
            f"the checkpoint on node {socket.gethostname()} differs from the driver's (fingerprint mismatch)"
        )
        return {**cell.record("error", reason), **node_identity()}
    log_dir = Path(tempfile.gettempdir()) / "loadbench-ray-logs"
    log_dir.mkdir(exist_ok=True)
    lane = os.environ.get("CUDA_VISIBLE_DEVICES") if payload["gpu"] else None
    lanes = [lane]
    ctx, isolation = _node_template()
    samplers = gpu_samplers(lanes)
    options = RunOptions(
        timeout_s=payload["timeout_s"],
        budget=Budget(**payload["budget"]),
        lanes=lanes,
        samplers=samplers,
        model_config=json.loads((checkpoint / "config.json").read_text()),
        calibration=_node_calibration(lane, str(log_dir)),
        quality_ref=_node_quality_reference(str(checkpoint), payload["fingerprint"], lane, str(log_dir)),
        faults=payload.get("faults") or {},
    )
    store = MemoryStore(log_dir)
    try:
        Runner(store, checkpoint, options, NullProgress(), ctx).run([cell])  # type: ignore[arg-type]
    finally:
        for sampler in samplers.values():
            sampler.stop()
    record = store.records[-1]
    record.update(node_identity())
    record["isolation"] = isolation
    return record


def node_facts() -> dict[str, Any]:
    """A node's hardware, for the run's environment (probed on the node, CUDA untouched)."""
    from bench.plan.capabilities import probe_cached

    return {**node_identity(), **probe_cached().to_dict()}


class RayExecutor:
    """The driver: submits cells as Ray tasks, writes each record as it lands."""

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
        faults: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.fingerprint = fingerprint
        self.progress = progress
        self.address = address
        self.timeout_s = timeout_s
        self.budget = budget
        self.faults = faults or {}

    def _connect(self) -> Any:
        ray = import_ray()
        if self.address is None:
            # A local cluster: keep every Ray process on loopback (Ray's own switch for laptops), so
            # nothing listens on or talks to the machine's network address.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if not ray.is_initialized():
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

    def run(self, cells: list[Cell]) -> int:
        ray = self._connect()
        self.store.set_meta("nodes", self.describe_nodes(ray))
        gpu = ray.cluster_resources().get("GPU", 0) > 0
        # On a CPU cluster a cell takes a whole node, so cells never share cores and skew each other's timings.
        node_cpus = min(n["Resources"].get("CPU", 1) for n in ray.nodes() if n.get("Alive"))
        task = ray.remote(run_on_node)
        done = self.store.final_cell_ids()
        refs: dict[Any, Cell] = {}
        for cell in cells:
            if cell.skip_reason is not None or cell.cell_id in done or not self.store.claim(cell.cell_id):
                continue
            payload = {
                "cell": cell.to_dict(),
                "model": self.model,
                "fingerprint": self.fingerprint,
                "gpu": gpu,
                "timeout_s": self.timeout_s,
                "budget": vars(self.budget),
                "faults": {k: v for k, v in self.faults.items() if k in (cell.cell_id, cell.label)},
            }
            resources = {"num_gpus": 1} if gpu else {"num_cpus": node_cpus}
            refs[task.options(max_retries=1, retry_exceptions=False, **resources).remote(payload)] = cell
            self.progress.cell_started(cell)
        ran = 0
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    cell = refs.pop(ref)
                    self._finish(cell, self._result(ray, ref, cell))
                    ran += 1
        except KeyboardInterrupt:
            for ref, cell in refs.items():
                ray.cancel(ref, force=True)
                self._finish(cell, cell.record("interrupted", "stopped by Ctrl-C; --resume runs it again"))
            raise
        return ran

    def _result(self, ray: Any, ref: Any, cell: Cell) -> dict[str, Any]:
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:  # node lost, worker crashed: after Ray's one retry
            reason = (
                f"the cell's Ray task failed after one retry: {type(exc).__name__} "
                f"({str(exc).splitlines()[0][:300] if str(exc) else 'no message'})"
            )
            return {**cell.record("crashed", reason), "ray.error": type(exc).__name__}

    def _finish(self, cell: Cell, record: dict[str, Any]) -> None:
        self.store.append(record)
        self.store.release(cell.cell_id)
        self.progress.cell_finished(cell, record)
