"""Setting up a node to run cells, written once for every executor: the warm template, the checkpoint,
the quality reference (cached beside the checkpoints), the GPU calibration and the NVML samplers.

The local executor calls `prepare_node` once per run; on Ray each worker process calls it once per
checkpoint and lane. Run-level probes (calibration, quality reference) run in a worker process, like a
cell, so the parent never touches CUDA.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure.sampler import NvmlSampler, handle_for, import_nvml
from bench.plan.checkpoints import cache_root, checkpoint_fingerprint
from bench.plan.planning import resolve_model
from bench.run.messages import CalibrationTask, ProbeAnswer, ReferenceTask, Task

TEMPLATE_MODULES = ["bench.run.template"]  # torch, transformers, peft, bitsandbytes; never CUDA
TEMPLATE_LOG_ENV = "LOADBENCH_TEMPLATE_LOG"  # where the template sends what libraries print on import


def worker_environment() -> None:
    """Environment the template and its cells inherit: offline, and CUDA checks that do not poison fork."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def start_template(log: Path | None = None) -> tuple[Any, float, str]:
    """Start the forkserver that holds the warm imports; returns (context, seconds, isolation mode).

    `log` receives what the libraries print while the template imports them (third-party noise such as
    bitsandbytes' kernels-community warning), instead of the user's terminal. A forkserver already
    running in this process (the Python API, tests) is reused and keeps its first log.

    If a forked child finds CUDA already initialised by the template (a "bad fork"), cells could not
    use the GPU; then every cell gets a cold interpreter instead (slower, still isolated), and the
    mode says so.
    """
    worker_environment()
    if log is not None:
        os.environ[TEMPLATE_LOG_ENV] = str(log)
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


def stop_template() -> None:
    """Stop this process's forkserver and resource tracker now, waiting for both: at the end of `loadbench
    run` no process of its group may outlive it (they would otherwise linger until they notice the parent
    is gone). multiprocessing starts them again on the next use."""
    from multiprocessing import resource_tracker

    for helper in (
        getattr(multiprocessing.forkserver, "_forkserver", None),
        getattr(resource_tracker, "_resource_tracker", None),
    ):
        stop = getattr(helper, "_stop", None)  # CPython's own way to stop them (used by its tests)
        if stop is not None:
            with contextlib.suppress(OSError, ChildProcessError, TypeError):
                stop()


def _fork_check(conn: Any) -> None:
    import torch

    conn.send(bool(torch.cuda._is_in_bad_fork()))
    conn.close()


def run_task(ctx: Any, task: Task, timeout_s: float = 600.0) -> dict[str, Any]:
    """Run a run-level probe task in a worker process: the parent never touches CUDA. The task's
    answer, or {"reason": ...} when it did not finish."""
    from bench.run import worker_entry

    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=worker_entry.main, args=(task, send))
    proc.start()
    send.close()
    what = "calibrate" if isinstance(task, CalibrationTask) else "quality_reference"
    result: dict[str, Any] = {"reason": f"the {what} task did not finish within {timeout_s:g} s"}
    if recv.poll(timeout_s):
        with contextlib.suppress(EOFError):
            answer = recv.recv()
            if isinstance(answer, ProbeAnswer):
                result = answer.values
    proc.join(timeout=10)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    return result


def run_calibration(ctx: Any, lane: str | None, log: Path, timeout_s: float = 120.0) -> dict[str, Any]:
    """The calibration probe (bench.measure.calibrate) on a lane's GPU."""
    return run_task(ctx, CalibrationTask(visible_devices=lane, log=str(log)), timeout_s)


def run_quality_reference(
    ctx: Any, checkpoint: Path, lane: str | None, path: Path, log: Path
) -> dict[str, Any]:
    """The quality reference (bench.measure.quality) of a checkpoint, computed once and cached on disk."""
    task = ReferenceTask(
        checkpoint=str(checkpoint),
        path=str(path),
        device="cpu" if lane is None else "cuda",
        visible_devices=lane,
        log=str(log),
    )
    return run_task(ctx, task)


def quality_reference_path(fingerprint: str, device: str) -> Path:
    """Where a checkpoint's quality reference is cached: beside the checkpoints, not in a run directory,
    because T × vocab float32 is ~1 GB for 150k vocabularies and every run of the checkpoint reuses it."""
    return cache_root() / "quality" / f"{fingerprint}-{device}.safetensors"


def node_checkpoint(model: str, fingerprint: str) -> tuple[Path, str | None]:
    """This node's copy of the run's checkpoint (the same cache key on every node: a hit or a build),
    and why it cannot be used when its files differ from the driver's."""
    checkpoint = resolve_model(model)
    if checkpoint_fingerprint(checkpoint) != fingerprint:
        return checkpoint, (
            f"the checkpoint on node {socket.gethostname()} differs from the driver's (fingerprint mismatch)"
        )
    return checkpoint, None


@dataclass(frozen=True)
class NodeSetup:
    """What a node has ready before its first cell."""

    ctx: Any  # the multiprocessing context cells are started from
    template_s: float
    isolation: str
    quality_reference: dict[str, Any]  # path, seconds, tokens, knobs; or reason
    calibration: dict[str, Any] | None  # GPU lanes only

    @property
    def quality_ref(self) -> str | None:
        return self.quality_reference.get("path")


def prepare_node(checkpoint: Path, fingerprint: str, lane: str | None, log_dir: Path) -> NodeSetup:
    """Start the warm template, then compute (or find) the quality reference and, on a GPU lane, the
    calibration, each in a worker process of that template; probe logs go to `log_dir`."""
    ctx, template_s, isolation = start_template(log_dir / "template.log")
    device = "cpu" if lane is None else "cuda"
    ref_path = quality_reference_path(fingerprint, device)
    ref_path.parent.mkdir(parents=True, exist_ok=True)
    reference = run_quality_reference(ctx, checkpoint, lane, ref_path, log_dir / "quality.log")
    calibration = None if lane is None else run_calibration(ctx, lane, log_dir / "calibration.log")
    return NodeSetup(ctx, template_s, isolation, reference, calibration)


def gpu_samplers(lanes: list[str | None]) -> dict[int, NvmlSampler]:
    """One NVML sampler thread per GPU lane; none without NVML (the records then say why)."""
    if lanes[0] is None:
        return {}
    nvml = import_nvml()
    if nvml is None:
        return {}
    return {
        i: NvmlSampler(nvml, handle_for(nvml, lane)).start()
        for i, lane in enumerate(lanes)
        if lane is not None
    }
