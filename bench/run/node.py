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
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure.reference_file import REFERENCE, cached_reference
from bench.measure.sampler import NvmlSampler, handle_for, import_nvml
from bench.plan.checkpoints import cache_root
from bench.plan.models import materialize, resolve
from bench.plan.spec import QUANT_VARIANTS
from bench.run.messages import CalibrationTask, DriftTask, ProbeAnswer, ReferenceTask, Task
from loader.quantization import METHODS

TEMPLATE_MODULES = ["bench.run.template.kbit"]  # torch, transformers, peft, bitsandbytes; never CUDA
BASE_TEMPLATE_MODULES = ["bench.run.template.base"]  # torch, transformers, the cell body: no k-bit cells
# the full template and the on-the-fly quantizers' libraries (torchao, hqq, quanto): their cells need them
QUANT_TEMPLATE_MODULES = [*TEMPLATE_MODULES, "bench.run.template.quant"]
# Around either template: the collector paused while it imports, then its objects frozen (the first and
# the last module the forkserver imports; it skips a module that fails to import and goes on to the next).
TEMPLATE_FIRST, TEMPLATE_LAST = "bench.run.template.gc_pause", "bench.run.template.gc_freeze"


def template_modules(quant: tuple[str, ...] | list[str]) -> list[str]:
    """What the template preloads for a run whose cells use these quantizations: bitsandbytes and peft
    only when some cell is quantized (k-bit cells load through bitsandbytes and train LoRA adapters), and
    the other quantizers' libraries only when some cell uses one."""
    if any(QUANT_VARIANTS.get(q, {}).get("quantization") in METHODS for q in quant):
        return QUANT_TEMPLATE_MODULES
    return BASE_TEMPLATE_MODULES if all(q == "none" for q in quant) else TEMPLATE_MODULES


def _covers(running: list[str], wanted: list[str]) -> bool:
    """Whether a forkserver that preloaded `running` has everything `wanted` would (the base template is
    part of the full one, the full one part of the quantizers' one)."""
    return wanted == BASE_TEMPLATE_MODULES or set(wanted) <= set(running)


def worker_environment() -> None:
    """Environment the template and its cells inherit: offline, and CUDA checks that do not poison fork."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# Where the template sends what libraries print on import; bench.run.template.quiet reads the same name.
TEMPLATE_LOG_ENV = "LOADBENCH_TEMPLATE_LOG"
_TEMPLATE_BEGUN: dict[str, float] = {}  # "at": perf_counter() when the template last began starting
_TEMPLATE_PRELOAD: list[str] = []  # what the running forkserver preloaded ([] while none runs)


def begin_template(modules: list[str] | None = None) -> None:
    """Start the forkserver that holds the warm imports, and return at once: it imports while the parent
    probes the host, plans and builds the checkpoint; `start_template` later waits for it. The
    forkserver is the process's: once running, later runs in this process reuse it, unless it is the light
    one and this run needs the full one (then it is restarted, so k-bit cells never import bitsandbytes
    inside their timeout). `modules` None: whatever runs, else the full template. What libraries print
    while the template imports goes to a temporary log (bench.run.template.quiet), which start_template
    copies into the run's logs."""
    worker_environment()
    running = list(_TEMPLATE_PRELOAD)
    wanted = modules or running or TEMPLATE_MODULES
    if running and not _covers(running, wanted):
        stop_template()
    if not os.environ.get(TEMPLATE_LOG_ENV):
        fd, path = tempfile.mkstemp(prefix="loadbench-template-", suffix=".log")
        os.close(fd)
        os.environ[TEMPLATE_LOG_ENV] = path
    ctx = multiprocessing.get_context("forkserver")
    if not _TEMPLATE_PRELOAD:
        ctx.set_forkserver_preload([TEMPLATE_FIRST, *wanted, TEMPLATE_LAST])
        _TEMPLATE_PRELOAD[:] = wanted
    _TEMPLATE_BEGUN.setdefault("at", time.perf_counter())
    multiprocessing.forkserver.ensure_running()


def start_template(log: Path | None = None) -> tuple[Any, float, str]:
    """Wait for the forkserver that holds the warm imports (starting it if `begin_template` did not);
    returns (context, seconds since it began starting, isolation mode); what the imports printed is
    copied to `log`.

    `log` receives what the libraries print while the template imports them (third-party noise such as
    bitsandbytes' kernels-community warning), instead of the user's terminal. A forkserver already
    running in this process (the Python API, tests) is reused and keeps its first log.

    If a forked child finds CUDA already initialised by the template (a "bad fork"), cells could not
    use the GPU; then every cell gets a cold interpreter instead (slower, still isolated), and the
    mode says so.
    """
    begin_template()
    ctx = multiprocessing.get_context("forkserver")
    # ensure_running returns before the preload finishes; one trivial child waits for it.
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_fork_check, args=(send,))
    proc.start()
    send.close()
    bad_fork = recv.recv() if recv.poll(300) else True
    proc.join()
    elapsed = time.perf_counter() - _TEMPLATE_BEGUN.pop("at", time.perf_counter())
    noise = os.environ.get(TEMPLATE_LOG_ENV)
    if log is not None and noise and os.path.exists(noise):
        log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(noise, log)
    if bad_fork:
        return multiprocessing.get_context("spawn"), elapsed, "spawn: the template had initialised CUDA"
    return ctx, elapsed, "forkserver"


def stop_template() -> None:
    """Stop this process's forkserver and resource tracker now, waiting for both: at the end of `loadbench
    run` no process of its group may outlive it (they would otherwise linger until they notice the parent
    is gone). multiprocessing starts them again on the next use.

    The forkserver holds no state, only the template's imports, so it is killed rather than asked to exit:
    an exit tears down torch and transformers first, a second or more of the user's time. The resource
    tracker is asked (it unlinks what a killed cell left registered); both are reaped, never left zombies."""
    from multiprocessing import resource_tracker

    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    pid = getattr(server, "_forkserver_pid", None)
    if isinstance(pid, int):
        with contextlib.suppress(OSError):  # already gone: _stop below reaps it all the same
            os.kill(pid, signal.SIGKILL)
    for helper in (server, getattr(resource_tracker, "_resource_tracker", None)):
        stop = getattr(helper, "_stop", None)  # CPython's own way to stop them (used by its tests)
        if stop is not None:
            with contextlib.suppress(OSError, ChildProcessError, TypeError):
                stop()
    noise = os.environ.pop(TEMPLATE_LOG_ENV, None)  # copied into the run's logs by start_template
    if noise:
        with contextlib.suppress(OSError):
            os.unlink(noise)
    _TEMPLATE_BEGUN.clear()
    _TEMPLATE_PRELOAD.clear()


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
    what = {CalibrationTask: "calibrate", DriftTask: "drift probe"}.get(type(task), "quality_reference")
    result: dict[str, Any] = {"reason": f"the {what} task did not finish within {timeout_s:g} s"}
    answered = recv.poll(timeout_s)
    if answered:
        with contextlib.suppress(EOFError):
            answer = recv.recv()
            if isinstance(answer, ProbeAnswer):
                result = answer.values
    proc.join(timeout=10 if answered else 0)  # an overrun task is killed at once, not waited for
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    return result


def run_calibration(ctx: Any, lane: str | None, log: Path, timeout_s: float = 120.0) -> dict[str, Any]:
    """The calibration probe (bench.measure.calibrate) on a lane's GPU."""
    return run_task(ctx, CalibrationTask(visible_devices=lane, log=str(log)), timeout_s)


def run_drift_probe(ctx: Any, lane: str | None, log: Path, timeout_s: float = 120.0) -> dict[str, Any]:
    """The machine-speed probe (bench.measure.calibrate.drift_probe) on a lane's device, in a worker."""
    return run_task(ctx, DriftTask(visible_devices=lane, log=str(log)), timeout_s)


def drift_record(start: dict[str, Any], end: dict[str, Any] | None) -> dict[str, Any]:
    """run.json["drift"] (bench.schema.DRIFT_KEY): both probes and end.speed / start.speed when both ran."""
    ratio = None
    if end is not None and start.get("speed") and end.get("speed") and start.get("probe") == end.get("probe"):
        ratio = end["speed"] / start["speed"]
    return {"start": start, "end": end, "end_over_start": ratio}


def run_quality_reference(
    ctx: Any, checkpoint: Path, lane: str | None, path: Path, log: Path, timeout_s: float = 600.0
) -> dict[str, Any]:
    """The quality reference (bench.measure.quality) of a checkpoint, computed once and cached on disk."""
    task = ReferenceTask(
        checkpoint=str(checkpoint),
        path=str(path),
        device="cpu" if lane is None else "cuda",
        visible_devices=lane,
        log=str(log),
    )
    return run_task(ctx, task, timeout_s)


NO_QUALITY = "quality was turned off (--no-quality)"


def say(line: str) -> None:
    """A progress line of the node's setup, on stderr (stdout holds the summary)."""
    print(line, file=sys.stderr, flush=True)


def prepare_quality_reference(
    ctx: Any, checkpoint: Path, fingerprint: str, lane: str | None, log: Path, timeout_s: float
) -> dict[str, Any]:
    """Find or compute the quality reference, saying what it does and how long it took, within
    `timeout_s` (a cell's timeout); {"path", ...} or {"reason"} (then every cell's quality.reason).
    Under a lock beside the file: two processes that want it at once (an ab run's two sides, two runs)
    compute it once, the second finding it cached."""
    import filelock

    device = "cpu" if lane is None else "cuda"
    path = quality_reference_path(fingerprint, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path) + ".lock"):
        return _find_or_compute_reference(ctx, checkpoint, lane, path, log, timeout_s, device)


def _find_or_compute_reference(
    ctx: Any, checkpoint: Path, lane: str | None, path: Path, log: Path, timeout_s: float, device: str
) -> dict[str, Any]:
    knobs = REFERENCE[device]
    name = f"{knobs['dtype']}/{knobs['quant']}/{knobs['attn']} reference of {checkpoint.name} on {device}"
    start = time.perf_counter()
    cached = cached_reference(checkpoint, device, path)  # read here: no worker, no torch in this process
    if cached is not None:
        say(f"quality reference: the cached {name} is ready ({time.perf_counter() - start:.1f} s)")
        return cached
    what = "checking the cached" if path.is_file() else "computing the"
    say(f"quality reference: {what} {name} (up to {timeout_s:g} s; --no-quality skips it)")
    reference = run_quality_reference(ctx, checkpoint, lane, path, log, timeout_s)
    elapsed = time.perf_counter() - start
    if "path" in reference:
        say(f"quality reference: ready in {elapsed:.1f} s")
        return reference
    reason = str(reference.get("reason"))
    if "did not finish" in reason:
        reason += "; raise --timeout, or pass --no-quality to measure without it"
        reference = {**reference, "reason": reason}
    say(f"quality reference: none after {elapsed:.1f} s: {reason}")
    return reference


def quality_reference_path(fingerprint: str, device: str) -> Path:
    """Where a checkpoint's quality reference is cached: beside the checkpoints, not in a run directory,
    because T × vocab float32 is ~1 GB for 150k vocabularies and every run of the checkpoint reuses it."""
    return cache_root() / "quality" / f"{fingerprint}-{device}.safetensors"


def node_checkpoint(model: str, fingerprint: str) -> tuple[Path, str | None]:
    """This node's copy of the run's checkpoint (the same cache key on every node: a hit or a build),
    and why it cannot be used when its files differ from the driver's."""
    resolved = resolve(model)  # the spec's model name, resolved on this node as on the driver
    checkpoint = materialize(resolved)
    if resolved.fingerprint != fingerprint:
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
    waited_s: dict[str, float]  # the caller's time per stage (bench.schema.TIME_STAGES): template, ...

    @property
    def quality_ref(self) -> str | None:
        return self.quality_reference.get("path")

    @property
    def quality_reason(self) -> str | None:
        return None if self.quality_ref else self.quality_reference.get("reason")


def prepare_node(
    checkpoint: Path,
    fingerprint: str,
    lane: str | None,
    log_dir: Path,
    *,
    quality: bool = True,
    timeout_s: float = 600.0,
) -> NodeSetup:
    """Start the warm template, then compute (or find) the quality reference (unless `quality` is off;
    within `timeout_s`) and, on a GPU lane, the calibration, each in a worker process of that
    template; probe logs go to `log_dir`. Called only when a runnable cell needs the node."""
    t0 = time.perf_counter()
    ctx, template_s, isolation = start_template(log_dir / "template.log")
    t1 = time.perf_counter()
    reference = (
        prepare_quality_reference(ctx, checkpoint, fingerprint, lane, log_dir / "quality.log", timeout_s)
        if quality
        else {"reason": NO_QUALITY}
    )
    t2 = time.perf_counter()
    calibration = None if lane is None else run_calibration(ctx, lane, log_dir / "calibration.log")
    waited = {"template": t1 - t0, "quality_reference": t2 - t1, "calibration": time.perf_counter() - t2}
    return NodeSetup(ctx, template_s, isolation, reference, calibration, waited)


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
