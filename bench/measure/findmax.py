"""--find-max: the largest batch (at the cell's seq) or seq (at its batch) whose step fits the memory budget.

The analytical estimate (bench.plan.estimate) gives the seed; real steps confirm it; the search gallops
from there and bisects. Each probe runs in its own process forked from this cell's process, which
itself never loads a model or touches CUDA: an OOM is then only data (the probe's process ends, its
allocator caches, fragmented heap and half-built autograd graph go with it), and the next probe starts
from exactly the state the first one did. Reusing one process would not be safe: after a CUDA OOM the
caching allocator keeps segments the next probe sees as free, and on the CPU glibc keeps the arenas a
failed attempt grew, so an answer would depend on the order of the probes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.measure.outcome import Emit

__all__ = [
    "DEFAULT_MAX_BATCH",
    "SEQ_STEP",
    "Search",
    "estimate_answer",
    "run_find_max",
    "search",
]

DEFAULT_MAX_BATCH = 256
SEQ_STEP = 64  # seq answers are multiples of this: the search's resolution
PROBE_LIMIT = 16  # a search that has not converged after this many steps stops and says so
_OOM_TEXT = ("can't allocate memory", "std::bad_alloc", "CUBLAS_STATUS_ALLOC_FAILED", "out of memory")


@dataclass
class Search:
    """What a search found: the answer (0 when not even the first unit fits), and every probe."""

    answer: int
    at_least: bool  # the cap itself fitted
    converged: bool
    trials: list[tuple[int, bool]] = field(default_factory=list)


def search(
    fits: Callable[[int], bool],
    seed: int,
    cap: int,
    unit: int = 1,
    *,
    blind: bool = False,
    limit: int = PROBE_LIMIT,
) -> Search:
    """The largest multiple of `unit` in [unit, cap] for which `fits` holds (memory is monotone in it).

    Seeded: probe the seed, then step away from it by an eighth of it, doubling the step each time,
    until one probe fits and one does not; then bisect. `blind` is the baseline without an estimate:
    start at `unit` and double.
    """
    cap = max(unit, cap // unit * unit)
    trials: list[tuple[int, bool]] = []

    def probe(value: int) -> bool:
        ok = fits(value)
        trials.append((value, ok))
        return ok

    def snap(value: int) -> int:
        return max(unit, min(cap, value // unit * unit))

    start = unit if blind else snap(seed)
    step = start if blind else max(unit, start // 8 // unit * unit)
    lo, hi = (start, None) if probe(start) else (0, start)
    while hi is None and lo < cap and len(trials) < limit:  # up: until one does not fit or the cap fits
        value = snap(lo + step)
        if probe(value):
            lo = value
        else:
            hi = value
        step *= 2
    while lo == 0 and hi is not None and hi > unit and len(trials) < limit:  # down: until one fits
        value = snap(hi - step)
        if probe(value):
            lo = value
        else:
            hi = value
        step *= 2
    while hi is not None and hi - lo > unit and len(trials) < limit:
        mid = max(lo + unit, (lo + hi) // 2 // unit * unit)
        if probe(mid):
            lo = mid
        else:
            hi = mid
    converged = hi is None or hi - lo <= unit
    return Search(lo, hi is None and lo == cap, converged, trials)


def estimate_answer(predicted: Callable[[int], int], allowance: int, cap: int, unit: int = 1) -> int:
    """The largest multiple of `unit` up to `cap` whose predicted bytes fit `allowance` (0: none does).

    The estimate is monotone in batch and seq, so doubling then bisecting finds it in a few dozen calls.
    """
    cap = max(unit, cap // unit * unit)
    if predicted(unit) > allowance:
        return 0
    lo = unit
    while lo < cap and predicted(min(cap, lo * 2)) <= allowance:
        lo = min(cap, lo * 2)
    hi = min(cap, lo * 2)
    if lo == cap:
        return cap
    while hi - lo > unit:
        mid = (lo + hi) // 2 // unit * unit
        if predicted(mid) <= allowance:
            lo = mid
        else:
            hi = mid
    return lo


# --- the probe: one real step in a fresh process ------------------------------------------------------


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and any(t in str(exc) for t in _OOM_TEXT)
    )


def _trains(cell: Any) -> bool:
    return "train" in cell.workloads and "train" not in dict(cell.dropped)


def _probe_body(cell: Any, checkpoint: Path, conn: Any) -> None:
    """In the probe's process: load, run the cell's step once at its shape, report the budget peak."""
    from bench.measure.cell import apply_memory_limit
    from bench.measure.decoding import generate_kwargs
    from bench.measure.probes import PhaseMemory, synchronizer
    from bench.measure.workloads import attach_lora, make_inputs, trainable_parameters
    from loader import current_host, get_model
    from loader.attention import sdpa_pin
    from loader.model import target_device

    try:
        torch.set_num_threads(cell.threads)
        caps = current_host()
        config = cell.load_config(checkpoint)
        device = target_device(config, caps)
        if cell.vram_limit_bytes is not None:
            apply_memory_limit(cell.vram_limit_bytes, device)
        mem = PhaseMemory(device)
        mem.start()
        model = get_model(config, caps, training=_trains(cell))
        ids = make_inputs(model.config.vocab_size, cell.shape.batch, cell.shape.seq, device)
        with sdpa_pin(config.sdpa_backend):  # the cell's pinned sdpa kernel, as it measures
            if _trains(cell):
                if cell.mode == "lora":
                    model = attach_lora(
                        model,
                        config.gradient_checkpointing,
                        kbit=config.kbit,
                        settings=cell.lora_settings,
                        quantization=config.quantization,
                    )
                model.train()
                optimizer = torch.optim.AdamW([p for _, p in trainable_parameters(model)], lr=1e-5)
                for _ in range(2):  # the second step runs with the optimizer states the first one made
                    model(ids, labels=ids, use_cache=False).loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            else:
                model.eval()
                with torch.no_grad():
                    if "prefill" in cell.workloads:
                        model(ids, use_cache=False)
                    if "decode" in cell.workloads:
                        model.generate(  # type: ignore[operator]
                            ids,
                            attention_mask=torch.ones_like(ids),
                            max_new_tokens=cell.shape.new_tokens,
                            min_new_tokens=cell.shape.new_tokens,
                            do_sample=False,
                            use_cache=config.resolved_use_cache,
                            pad_token_id=model.config.eos_token_id,
                            **generate_kwargs(getattr(cell, "decode", "dynamic")),
                        )
        synchronizer(device)()
        cols = mem.columns("probe")
        if device.startswith("cuda"):
            conn.send(("fits", cols["mem.probe.torch_reserved_bytes"], "torch reserved peak"))
        else:
            conn.send(("fits", cols["mem.probe.rss_bytes"], "RSS peak"))
    except BaseException as exc:  # an OOM is the answer "does not fit"; anything else ends the search
        conn.send(("oom" if _is_oom(exc) else "error", None, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def probe(cell: Any, checkpoint: Path) -> tuple[str, int | None, str]:
    """Run one probe of `cell` (at its shape) in a forked process: ("fits" | "oom" | "error", peak, note)."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_probe_body, args=(cell, checkpoint, send), daemon=True)
    proc.start()
    send.close()
    answer = None
    with contextlib.suppress(EOFError):  # the process died before answering
        answer = recv.recv()
    proc.join()
    if answer is not None:
        return answer
    if proc.exitcode == -signal.SIGKILL:  # the kernel's OOM killer (or RLIMIT made malloc abort)
        return "oom", None, "the probe's process was killed (SIGKILL)"
    return "error", None, f"the probe's process exited with code {proc.exitcode} without an answer"


# --- the cell ------------------------------------------------------------------------------------------


def _vm_data_bytes() -> int:
    """This process's private writable memory, which RLIMIT_DATA counts (a probe starts with it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return 0


def _gpu_total_bytes() -> int | None:
    """The lane's GPU memory from NVML: the cell's process must not touch CUDA before its probes fork."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            lane = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
            handle = (
                pynvml.nvmlDeviceGetHandleByUUID(lane)
                if lane.startswith(("GPU-", "MIG-"))
                else pynvml.nvmlDeviceGetHandleByIndex(int(lane))
            )
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def _budget(cell: Any) -> tuple[str, int | None, int]:
    """(device, budget bytes, the baseline the estimate adds to on the CPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cell.vram_limit_bytes is not None:
        return device, cell.vram_limit_bytes, _vm_data_bytes() if device == "cpu" else 0
    return device, _gpu_total_bytes() if device == "cuda" else None, 0


def _predictor(cell: Any, target: str, device: str, baseline: int, limited: bool) -> Callable[[int], int]:
    from bench.plan.estimate import config_for, estimate_cell

    arch = config_for(cell.model)
    phases = ["train"] if _trains(cell) else [w for w in cell.workloads if w != "train"]
    # Under a CUDA allocator fraction the context is outside the budget: compare the tensors alone.
    key = "estimate_tensor_bytes" if device == "cuda" and limited else "estimate_bytes"

    def predicted(value: int) -> int:
        shaped = dataclasses.replace(cell, shape=dataclasses.replace(cell.shape, **{target: value}))
        cols = estimate_cell(shaped, arch, device, baseline_bytes=baseline)
        return max(cols[f"mem.{p}.{key}"] for p in phases)

    return predicted


def _cap(cell: Any, target: str, checkpoint: Path) -> int:
    cap = cell.find_max.get("cap")
    if cap:
        return int(cap)
    if target == "batch":
        return DEFAULT_MAX_BATCH
    config = json.loads((checkpoint / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 4096)


def run_find_max(
    cell: Any,
    checkpoint: Path,
    budget: Any,
    emit: Emit,
    quality_ref: str | None = None,
    quality_reason: str | None = None,
    bitsandbytes: Any = None,
    kernels_reason: str | None = None,
) -> dict[str, Any]:
    """Search the cell's largest fitting batch or seq; with at_max, then measure the cell at it."""
    target = cell.find_max["target"]
    unit = 1 if target == "batch" else SEQ_STEP
    cap = _cap(cell, target, checkpoint)
    unit = min(unit, cap)
    device, budget_bytes, baseline = _budget(cell)
    out: dict[str, Any] = {"max.budget_bytes": budget_bytes, "max.cap": cap}
    estimate: int | None = None
    if budget_bytes is None:
        out["max.estimate.reason"] = "the GPU's memory could not be read from NVML"
    else:
        try:
            predicted = _predictor(cell, target, device, baseline, cell.vram_limit_bytes is not None)
            estimate = estimate_answer(predicted, budget_bytes, cap, unit)
        except (KeyError, ValueError) as exc:
            out["max.estimate.reason"] = f"the estimate cannot model this cell: {exc}"
    out["max.estimate"] = estimate
    peaks: dict[int, tuple[int | None, str]] = {}

    def fits(value: int) -> bool:
        shaped = dataclasses.replace(cell, shape=dataclasses.replace(cell.shape, **{target: value}))
        verdict, peak, note = probe(shaped, checkpoint)
        if verdict == "error":
            raise RuntimeError(f"the probe at {target}={value} failed (not for memory): {note}")
        peaks[value] = (peak, note)
        # The limit the probe ran under (RLIMIT_DATA on the CPU) counts private memory only; the peak it
        # reports (RSS) adds shared pages, so a probe that lived can still be over the budget: no fit.
        return verdict == "fits" and (budget_bytes is None or peak is None or peak <= budget_bytes)

    found = search(fits, estimate or unit, cap, unit, blind=estimate is None)
    out[f"max.{target}"] = found.answer
    out["max.at_least"] = found.at_least
    out["max.probes"] = len(found.trials)
    out["max.trials"] = " ".join(f"{v}:{'fits' if ok else 'oom'}" for v, ok in found.trials)
    if not found.converged:
        out[f"max.{target}.reason"] = f"the search stopped after {PROBE_LIMIT} probes before converging"
    if found.answer:
        out["max.peak_bytes"], out["max.peak_source"] = peaks[found.answer]
    else:
        out["max.peak_bytes"] = None
        out["max.peak_bytes.reason"] = f"not even {target}={unit} fits the budget"
    out["max.at_max"] = bool(cell.find_max.get("at_max")) and found.answer > 0
    if out["max.at_max"]:
        from bench.measure.cell import run_cell

        shaped = dataclasses.replace(cell, shape=dataclasses.replace(cell.shape, **{target: found.answer}))
        out.update(
            run_cell(
                shaped, checkpoint, budget, emit, quality_ref, quality_reason, bitsandbytes, kernels_reason
            )
        )
    return out
