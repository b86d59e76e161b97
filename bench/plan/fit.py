"""The fit check: a cell whose predicted peak memory exceeds what it would have is skipped before loading.

Loading a model that cannot fit costs minutes and ends `oom` or `timeout` (the SmolLM2 recipe, batch
4 × 8192 bf16 full fine-tune, predicted 31 GiB, loaded on a 24 GiB CPU host and timed out after 7 minutes).
The analytical estimate (bench.plan.estimate) already predicts every phase's peak; this compares the
largest of a cell's phases (load and the workloads it runs) with the memory the cell would have:

- a GPU host: the smallest NVML free memory of the visible GPUs (each cell gets a lane of its own);
- a CPU host: the host's available RAM (psutil's `available`: free plus reclaimable page cache);
- either, capped by `--vram-limit` when it is given (what the cell's process is then allowed).

The margin. A cell is skipped only when the prediction exceeds the available memory by more than
FIT_MARGIN (10 %), i.e. when even an estimate that is 10 % too high would not fit: on the H100 set the
estimate is within 1.6 % of every allocator peak and the accuracy test bounds it at 10 %; on the CPU
the estimate has been *below* the measured RSS growth (7–53 % for tiny models, where the runtime
dominates), so an overestimate beyond 10 % has not been seen. The check therefore never skips a cell
that would have fitted by the estimate's known error; a cell it lets through may still end `oom`.
The estimate's own columns (`mem.<phase>.estimate_bytes`) stay on every record; the check adds the
`fit.*` columns (bench.schema.FIT_COLUMNS) and, for a skipped cell, a reason naming the fixes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.plan.cells import Cell
from bench.units import fmt_bytes

__all__ = ["FIT_MARGIN", "MemoryBudget", "apply_fit_check", "available_memory", "fit_columns"]

FIT_MARGIN = 0.10


@dataclass(frozen=True)
class MemoryBudget:
    """The memory one cell would have on this host, and where the figure comes from."""

    device: str  # "cuda" or "cpu": which estimate applies
    available_bytes: int | None  # None: unknown (the check is then not applied, and says why)
    source: str  # e.g. "available RAM (psutil)", "NVML free memory of GPU 0", "--vram-limit"


def _gpu_free_bytes(nvml: Any = None) -> tuple[int, str] | None:
    """The smallest free memory (bytes) of the visible GPUs, and which GPU; None when NVML cannot say."""
    from bench.plan.gpu_facts import _import_pynvml, _text, visible_indices

    try:
        nvml = nvml or _import_pynvml()
        nvml.nvmlInit()
    except Exception:
        return None
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
        visible = visible_indices(uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))
        free = [(int(nvml.nvmlDeviceGetMemoryInfo(handles[n]).free), i) for i, n in enumerate(visible)]
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    if not free:
        return None
    nbytes, index = min(free)
    return nbytes, f"NVML free memory of GPU {index}"


def available_memory(cuda: bool, vram_limit_bytes: int | None = None, nvml: Any = None) -> MemoryBudget:
    """What a cell on this host would have: free GPU memory (NVML) or available RAM, capped by the limit."""
    device = "cuda" if cuda else "cpu"
    found: tuple[int, str] | None
    if cuda:
        found = _gpu_free_bytes(nvml)
    else:
        import psutil

        found = int(psutil.virtual_memory().available), "available RAM (psutil)"
    if vram_limit_bytes is not None and (found is None or vram_limit_bytes < found[0]):
        return MemoryBudget(device, vram_limit_bytes, "--vram-limit")
    if found is None:
        return MemoryBudget(device, None, "NVML could not report free GPU memory")
    return MemoryBudget(device, found[0], found[1])


def _fixes(cell: Cell) -> str:
    """The knobs that lower this cell's peak, as flags."""
    fixes = ["lower --seq or --batch"]
    if "train" in cell.workloads and not cell.grad_ckpt:
        fixes.append("turn on --grad-ckpt")
    if cell.quant == "none":
        fixes.append("quantize (--quant nf4)")
    return ", ".join(fixes[:-1]) + (", or " if len(fixes) > 1 else "") + fixes[-1]


def fit_columns(cell: Cell, config: Mapping[str, Any], budget: MemoryBudget) -> dict[str, Any]:
    """The cell's `fit.*` columns: its predicted peak (the largest phase it runs) against the budget."""
    from bench.plan.estimate import estimate_cell

    out: dict[str, Any] = {
        "fit.predicted_bytes": None,
        "fit.predicted_phase": None,
        "fit.available_bytes": budget.available_bytes,
        "fit.available_source": budget.source,
        "fit.margin": FIT_MARGIN,
        "fit.verdict": "unknown",
        "fit.reason": None,
    }
    try:
        cols = estimate_cell(cell, config, budget.device)
    except (KeyError, ValueError, TypeError) as exc:  # an architecture the estimate does not model
        out["fit.reason"] = (
            f"the memory estimate cannot model this architecture ({type(exc).__name__}: {exc})"
        )
        return out
    dropped = {name for name, _ in cell.dropped}
    phases = [p for p in ("load", *cell.workloads) if p not in dropped]
    peak_phase = max(phases, key=lambda p: cols.get(f"mem.{p}.estimate_bytes", 0))
    predicted = cols.get(f"mem.{peak_phase}.estimate_bytes")
    out["fit.predicted_bytes"], out["fit.predicted_phase"] = predicted, peak_phase
    if budget.available_bytes is None or predicted is None:
        out["fit.reason"] = budget.source
        return out
    out["fit.verdict"] = "exceeds" if predicted > budget.available_bytes * (1 + FIT_MARGIN) else "fits"
    return out


def skip_reason(cell: Cell, cols: Mapping[str, Any]) -> str:
    """The sentence of a cell the check skips: the prediction, the budget and the fixes."""
    return (
        f"rule fit: predicted {fmt_bytes(cols['fit.predicted_bytes'])} ({cols['fit.predicted_phase']} peak) > "
        f"{fmt_bytes(cols['fit.available_bytes'])} available ({cols['fit.available_source']}, "
        f"{FIT_MARGIN:.0%} margin); {_fixes(cell)}, or pass --no-fit-check to load it anyway."
    )


def apply_fit_check(cells: list[Cell], config: Mapping[str, Any], budget: MemoryBudget | None) -> list[Cell]:
    """Every cell with its `fit.*` columns; a runnable one predicted not to fit is skipped.

    `budget` None means the check is off (--no-fit-check): the columns say so and nothing is skipped.
    """
    out = []
    for cell in cells:
        if budget is None:
            cols: dict[str, Any] = {"fit.verdict": "off", "fit.reason": "--no-fit-check"}
            out.append(dataclasses.replace(cell, fit=tuple(cols.items())))
            continue
        cols = fit_columns(cell, config, budget)
        cell = dataclasses.replace(cell, fit=tuple(cols.items()))
        if cell.skip_reason is None and cols["fit.verdict"] == "exceeds":
            cell = dataclasses.replace(cell, skip_reason=skip_reason(cell, cols))
        out.append(cell)
    return out
