"""Expanding a spec into cells and the rules that skip a cell (or drop a workload), each with its reason.

Every cell of the cross product appears in the results, run or skipped; a skip reason starts with
"rule <name>:" so a reader can tell which rule made it.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from bench.plan.cells import Cell
from bench.plan.spec import MatrixSpec
from loader import LoadConfigError
from loader.dtypes import resolve_dtype
from loader.host import HostCapabilities
from loader.support import unsupported_reason

__all__ = ["apply_rules", "expand"]


def expand(spec: MatrixSpec, checkpoint: Path, fingerprint: str, caps: HostCapabilities) -> list[Cell]:
    """Every cell of the spec's cross product, each marked run or skip (with the rule's reason)."""
    cells = []
    search = _search(spec)
    for dtype, quant, attn, ckpt, cache, mode in itertools.product(
        spec.dtype, spec.quant, spec.attn, spec.grad_ckpt, spec.use_cache, spec.train_mode or ("",)
    ):
        cell = Cell(
            spec.model,
            fingerprint,
            dtype,
            quant,
            attn,
            ckpt,
            cache,
            spec.workloads,
            spec.shape,
            spec.threads,
            spec.load,
            spec.vram_limit_bytes,
            train_mode=mode,
            lora=spec.lora,
            search=search,
        )
        cells.append(apply_rules(cell, checkpoint, caps))
    return cells


def _search(spec: MatrixSpec) -> tuple[tuple[str, Any], ...]:
    """A spec's --find-max settings as the cells carry them (part of their id)."""
    if spec.find_max is None:
        return ()
    cap = spec.max_batch if spec.find_max == "batch" else spec.max_seq
    return (("at_max", spec.at_max), ("cap", cap), ("target", spec.find_max))


def apply_rules(cell: Cell, checkpoint: Path, caps: HostCapabilities) -> Cell:
    """Mark a cell skipped, or drop workloads it cannot run; each reason starts with its rule's name."""
    if cell.quant != "none" and cell.mode == "full":
        return dataclasses.replace(
            cell,
            skip_reason=f"rule kbit-trains-lora: {cell.quant} weights are frozen integers that AdamW cannot "
            "update, so a k-bit cell trains LoRA adapters (QLoRA); use train_mode lora.",
        )
    if cell.find_max and cell.vram_limit_bytes is None and not caps.cuda:
        return dataclasses.replace(
            cell,
            skip_reason="rule find-max-needs-budget: --find-max on a host without a GPU needs --vram-limit "
            "(the budget to search under); the search would otherwise fill this host's memory.",
        )
    if cell.grad_ckpt and "train" not in cell.workloads:
        return dataclasses.replace(
            cell,
            skip_reason="rule checkpointing-needs-train: gradient checkpointing only changes training, "
            "and this matrix has no train workload.",
        )
    try:
        config = cell.load_config(checkpoint)
    except LoadConfigError as exc:
        return dataclasses.replace(cell, skip_reason=f"rule loader-config: {exc}")
    # Only config.json is read here; damaged weights are the cell's own error, found when it loads.
    dtype = resolve_dtype(config.dtype, checkpoint)
    reason = unsupported_reason(config, caps, dtype=dtype)
    if reason:
        return dataclasses.replace(cell, skip_reason=f"rule host: {reason}")
    dropped = []
    if "train" in cell.workloads:
        train_reason = unsupported_reason(config, caps, training=True, dtype=dtype)
        if train_reason:
            dropped.append(("train", f"rule host: {train_reason}"))
    if len(dropped) == len(cell.workloads):
        return dataclasses.replace(cell, skip_reason=dropped[0][1])
    return dataclasses.replace(cell, dropped=tuple(dropped))
