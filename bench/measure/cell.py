"""What runs inside one cell's process: load through the loader, run the workloads, report the outcome.

The process is forked from a warm template (torch, transformers, bitsandbytes and peft imported, CUDA
untouched), so it starts in milliseconds and still gets a fresh CUDA context. `run_cell` emits typed
events (bench.measure.outcome) as it enters each phase and returns its metric columns; `classify` turns
a failure into a typed outcome. The process entry and the pipe are the run stage's
(bench.run.worker_entry); if the process dies instead, the runner classifies the death from outside.
"""

from __future__ import annotations

import gc
import time
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

from bench.measure.attention import (
    DECODE_KERNEL_COLUMN,
    decode_kernel_columns,
    not_probed,
    sdpa_kernel_columns,
)
from bench.measure.decoding import compile_warmup, generate_kwargs
from bench.measure.outcome import CellOutcome, Emit, ErrorInfo, PhaseStarted, WindowMeasured
from bench.measure.probes import Budget, PhaseMemory, Sampler, Stats, current_rss_bytes, synchronizer
from bench.measure.quality import quality_or_reason
from bench.measure.workloads import (
    InvalidMeasurement,
    Workload,
    attach_lora,
    decode,
    first_forward,
    generate_once,
    make_inputs,
    prefill,
    repacked_for_cpu,
    train,
)
from bench.plan.matrix import Cell
from loader import LoadConfigError, UnsupportedOnHost, current_host, get_model, get_tokenizer
from loader.attention import sdpa_pin
from loader.host import BnbFacts, probe_host
from loader.model import target_device


def _cpu_allocation_failure(exc: BaseException) -> bool:
    """torch's CPU allocator reports exhaustion as a RuntimeError, not a MemoryError."""
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


# torch's refusal when sdpa is pinned to a kernel that cannot take the call (CPU wording, then CUDA's)
_SDPA_REFUSALS = ("No viable backend for scaled_dot_product_attention", "No available kernel")


def _sdpa_refusal(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _SDPA_REFUSALS)


def classify(exc: BaseException) -> CellOutcome:
    """A failure as a final status with its reason (DESIGN.md section 5)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or _cpu_allocation_failure(exc):
        status = "oom"
    elif isinstance(exc, (UnsupportedOnHost, NotImplementedError)) or _sdpa_refusal(exc):
        status = "unsupported"
    elif isinstance(exc, InvalidMeasurement):
        status = "invalid"
    else:
        status = "error"
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return CellOutcome(
        status,
        f"{type(exc).__name__}: {exc}" if not isinstance(exc, LoadConfigError) else str(exc),
        error=ErrorInfo(type(exc).__name__, str(exc), "".join(tb[-3:])[-2000:]),
    )


def _release(model: Any) -> None:
    del model
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def apply_memory_limit(limit: int, device: str) -> str:
    """Make this process behave like one with `limit` bytes of memory; returns how.

    On CUDA the caching allocator refuses to grow past the fraction (an H100 acts as a 24 GiB card;
    the CUDA context itself is not counted). On the CPU, RLIMIT_DATA caps the process's private
    writable memory (Linux 4.7+), which includes the few hundred MB the warm worker already holds.
    """
    if device.startswith("cuda"):
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
        return f"torch.cuda.set_per_process_memory_fraction({min(1.0, limit / total):.4f})"
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    return f"RLIMIT_DATA={soft}"


def run_cell(
    cell: Cell,
    checkpoint: Path,
    budget: Budget,
    emit: Emit,
    quality_ref: str | None = None,
    quality_reason: str | None = None,
    bitsandbytes: BnbFacts | None = None,
    kernels_reason: str | None = None,
) -> dict[str, Any]:
    """Load the cell's model, then run its workloads; returns flat metric columns. `emit` hears each
    phase as it starts and each measured window. Without `quality_ref` there is no quality pass, and
    the quality columns are null with `quality_reason` (why the run has no reference). `bitsandbytes`:
    the run's probe of it on this host, which an unquantized cell reuses rather than import
    bitsandbytes (seconds) to learn the same. With `kernels_reason` the untimed probes of which sdpa
    kernel ran (a profiled forward and generation, a tenth of a second or more) are left out and their
    columns null with that reason (an ab side reads them in its first round only)."""
    torch.set_num_threads(cell.threads)
    caps = probe_host(bitsandbytes) if bitsandbytes is not None and cell.quant == "none" else current_host()
    config = cell.load_config(checkpoint)
    device = target_device(config, caps)
    sync = synchronizer(device)
    out: dict[str, Any] = {
        "device": device,
        "threads": torch.get_num_threads(),  # read back, not the value asked for
        "dtype_resolved": config.resolved_dtype,
        "mem.baseline_rss_bytes": current_rss_bytes(),  # before anything loads: what the estimate adds to
    }
    if cell.vram_limit_bytes is not None:
        out["vram_limit.mechanism"] = apply_memory_limit(cell.vram_limit_bytes, device)

    emit(PhaseStarted("load"))
    out.update(read_floor(checkpoint, device, sync))
    mem = PhaseMemory(device)
    mem.start()
    start = time.perf_counter()
    tokenizer = get_tokenizer(config)
    out["load.tokenizer_s"] = time.perf_counter() - start
    start = time.perf_counter()
    transformers.AutoConfig.from_pretrained(checkpoint)
    out["load.config_s"] = time.perf_counter() - start
    training = "train" in cell.workloads and "train" not in dict(cell.dropped)
    start = time.perf_counter()
    model = get_model(config, caps, training=training)
    sync()
    out["load.model_first_s"] = time.perf_counter() - start
    out["mem.footprint_bytes"] = storage_bytes(model)
    out["params"] = sum(p.numel() for p in model.parameters())
    vocab = min(len(tokenizer), model.config.vocab_size)
    ids = make_inputs(vocab, cell.shape.batch, cell.shape.seq, device)
    work = Workload(model, ids, cell.shape.new_tokens, budget, sync, tokenizer.pad_token_id)
    del model  # work.model is the one reference, so replacing it frees the model
    # an sdpa pin wraps every call of the model from here on: forwards, quality, workloads, compiling
    with sdpa_pin(config.sdpa_backend):
        out["load.first_forward_s"] = first_forward(work)
        out.update(mem.columns("load"))
        if kernels_reason is None:
            kernel, sdpa_per_forward = sdpa_kernel_columns(work.model, ids, config.attn_implementation)
        else:
            kernel, sdpa_per_forward = not_probed(kernels_reason), 0
        out.update(kernel)
        # One extra no-grad pass over the evaluation text, before any training step changes the weights.
        out.update(
            quality_or_reason(work.model, tokenizer, device, quality_ref, checkpoint, reason=quality_reason)
        )
        _run_workloads(cell, config, caps, work, mem, emit, out, sdpa_per_forward, kernels_reason)

    # Repeated loads come last, so no workload's peak sees memory a freed model left in the allocator.
    emit(PhaseStarted("load"))
    work.model = None
    loads = sample_loads(lambda: get_model(config, caps, training=training), budget, sync)
    out.update(loads.columns("load.model_s"))
    out["load.model_over_floor"] = loads.median / out["load.read_floor_s"]
    return out


def _run_workloads(
    cell: Cell,
    config: Any,
    caps: Any,
    work: Workload,
    mem: PhaseMemory,
    emit: Emit,
    out: dict[str, Any],
    sdpa_per_forward: int,
    kernels_reason: str | None = None,
) -> None:
    """prefill, decode, train in that order (the ones the cell runs), each phase's memory apart.
    `sdpa_per_forward`: the sdpa calls one forward makes (0: not sdpa), for the decode kernel probe,
    which `kernels_reason` leaves out."""
    for name, reason in cell.dropped:
        out[f"{name}.skipped_reason"] = reason
    for name in ("prefill", "decode", "train"):
        if name not in cell.workloads or name in dict(cell.dropped):
            continue
        emit(PhaseStarted(name))
        if name == "train" and repacked_for_cpu(work.model):
            _release(work.model)
            work.model = get_model(config, caps, training=True)
            out["train.fresh_model"] = True
        if name == "train" and cell.mode == "lora":
            work.model = attach_lora(
                work.model,
                config.gradient_checkpointing,
                kbit=config.kbit,
                settings=cell.lora_settings,
                quantization=config.quantization,
            )
        if name == "decode":
            out.update(_decode(cell, config, work, mem))
        else:
            mem.start()
            out.update(prefill(work) if name == "prefill" else train(work))
        out.update(mem.columns(name))
        if name == "decode" and kernels_reason is not None:
            out.update(not_probed(kernels_reason, DECODE_KERNEL_COLUMN))
        elif (
            name == "decode"
        ):  # untimed, after the phase's peaks: the kernels one generation of this mode ran
            out.update(_decode_kernels(cell, config, work, sdpa_per_forward))
        for window in work.windows:
            emit(WindowMeasured(**window))
        work.windows.clear()


def _decode_kernels(cell: Cell, config: Any, work: Workload, sdpa_per_forward: int) -> dict[str, Any]:
    extra, cache = generate_kwargs(cell.decode), config.resolved_use_cache
    return decode_kernel_columns(
        lambda: generate_once(work, cache, extra),
        config.attn_implementation,
        sdpa_per_forward,
        work.new_tokens,
        pin=config.sdpa_backend,
    )


def _decode(cell: Cell, config: Any, work: Workload, mem: PhaseMemory) -> dict[str, Any]:
    """The decode workload in the cell's mode. A compiled mode compiles first, before the phase's memory
    peaks reset and outside every timed sample; its time is decode.compile_s, never part of TTFT or
    tokens/s."""
    use_cache = config.resolved_use_cache
    extra = generate_kwargs(cell.decode)
    compiled = None
    if cell.decode == "compiled":
        work.model.eval()
        compiled = compile_warmup(lambda: generate_once(work, use_cache, extra), work.sync)
    mem.start()
    out = decode(work, use_cache, extra, compiled)
    if compiled is None:
        out.update(
            {"decode.compile_s": None, "decode.compile_s.reason": f"decode={cell.decode} does not compile"}
        )
    return out


def storage_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers as stored. transformers' get_memory_footprint counts a
    torchao or quanto weight (a tensor subclass) at its outer dtype; this counts the tensors inside it
    (int8 data, scales, zero points), which is what the weight holds in memory."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    def nbytes(t: torch.Tensor) -> int:
        if is_traceable_wrapper_subclass(t):
            names, _ = t.__tensor_flatten__()
            return sum(nbytes(getattr(t, name)) for name in names)
        return t.nelement() * t.element_size()

    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(nbytes(t) for t in tensors.values())


def sample_loads(load: Callable[[], Any], budget: Budget, sync: Callable[[], None]) -> Stats:
    """load.model_s: repeated loads with the page cache warm, each after the previous model is freed
    (untimed), under the same stop rule as every timed metric. The first load of the cell is timed
    apart (load.model_first_s) and serves as the warm-up; the load phase's memory peaks are its own."""
    sampler = Sampler(Budget(**{**vars(budget), "warmup": 0}), sync)
    held: list[Any] = []

    def free() -> None:
        # `held` has the only reference, so clearing it frees the model; a full gc.collect() costs seconds
        # on a loaded machine (hundreds of thousands of objects), so it runs only if a cycle kept it alive.
        alive = [weakref.ref(held[0])] if held else []
        held.clear()
        if any(ref() is not None for ref in alive):
            gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    while not sampler.done:
        sampler.block(lambda: held.append(load()), before=free)
    free()
    return sampler.stats()


def warm_page_cache(files: list[Path]) -> None:
    """Read every byte once so the floor and the load both see a warm page cache (the stated state)."""
    for path in files:
        with path.open("rb") as fh:
            while fh.read(1 << 24):
                pass


def read_floor(checkpoint: Path, device: str, sync: Callable[[], None]) -> dict[str, Any]:
    """load.read_floor_s: read every tensor of the checkpoint with safetensors onto the target device.

    This is the I/O (and host-to-device) floor for loading; load.model_s / floor shows the overhead
    transformers adds on top. Tensors are freed before the real load.
    """
    from safetensors.torch import load_file

    files = sorted(checkpoint.glob("*.safetensors"))
    warm_page_cache(files)
    start = time.perf_counter()
    total = 0
    for path in files:
        tensors = load_file(str(path), device=device)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    sync()
    elapsed = time.perf_counter() - start
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"load.read_floor_s": elapsed, "load.read_floor_bytes": total, "load.page_cache": "warm"}
