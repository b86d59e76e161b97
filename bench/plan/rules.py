"""Expanding a spec into cells and the rules that skip a cell (or drop a workload), each with its reason.

Every cell of the cross product appears in the results, run or skipped; a skip reason starts with
"rule <name>:" so a reader can tell which rule made it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.plan.cells import Cell
from bench.plan.decode_modes import decode_unsupported_reason
from bench.plan.spec import MatrixSpec
from loader import LoadConfigError
from loader.dtypes import config_dtype, resolve_dtype
from loader.host import HostCapabilities
from loader.quantization import lora_unsupported_reason
from loader.support import unsupported_reason

if TYPE_CHECKING:
    from bench.plan.models import ResolvedModel

__all__ = ["apply_rules", "expand"]


def expand(
    spec: MatrixSpec,
    checkpoint: Path,
    fingerprint: str,
    caps: HostCapabilities,
    *,
    model: ResolvedModel | None = None,
) -> list[Cell]:
    """Every cell of the spec's cross product, each marked run or skip (with the rule's reason).

    With the resolved `model`, cells carry its source and weights, and "auto" dtypes resolve against
    its config (the checkpoint of random weights need not exist yet); without it, against `checkpoint`.
    """
    cells = []
    search = _search(spec)
    for dtype, quant, attn, ckpt, cache, mode, decode in itertools.product(
        spec.dtype,
        spec.quant,
        spec.attn,
        spec.grad_ckpt,
        spec.use_cache,
        spec.train_mode or ("",),
        spec.decode,
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
            decode=decode,
            model_source=model.source if model else None,
            weights=model.weights if model else None,
        )
        cells.append(apply_rules(cell, checkpoint, caps, model_config=model.config if model else None))
    return cells


def _search(spec: MatrixSpec) -> tuple[tuple[str, Any], ...]:
    """A spec's --find-max settings as the cells carry them (part of their id)."""
    if spec.find_max is None:
        return ()
    cap = spec.max_batch if spec.find_max == "batch" else spec.max_seq
    return (("at_max", spec.at_max), ("cap", cap), ("target", spec.find_max))


def apply_rules(
    cell: Cell, checkpoint: Path, caps: HostCapabilities, *, model_config: Mapping[str, Any] | None = None
) -> Cell:
    """Mark a cell skipped, or drop workloads it cannot run; each reason starts with its rule's name."""
    if cell.quant != "none" and cell.mode == "full":
        return dataclasses.replace(
            cell,
            skip_reason=f"rule kbit-trains-lora: {cell.quant} weights are frozen quantized values that AdamW cannot "
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
        load = cell.load_config(checkpoint)
    except LoadConfigError as exc:
        return dataclasses.replace(cell, skip_reason=f"rule loader-config: {exc}")
    # Only config.json is read here; damaged weights are the cell's own error, found when it loads.
    if model_config is not None and load.dtype == "auto":
        dtype = config_dtype(model_config)
    else:
        dtype = resolve_dtype(load.dtype, checkpoint)
    reason = unsupported_reason(load, caps, dtype=dtype)
    if reason:
        return dataclasses.replace(cell, skip_reason=f"rule host: {reason}")
    decode_reason = decode_unsupported_reason(
        cell.decode,
        decodes="decode" in cell.workloads,
        use_cache=load.resolved_use_cache,
        quantization=load.quantization,
        caps=caps,
    )
    if decode_reason:
        return dataclasses.replace(cell, skip_reason=decode_reason)
    dropped = []
    if "train" in cell.workloads:
        lora_reason = lora_unsupported_reason(load.quantization) if cell.mode == "lora" else None
        train_reason = unsupported_reason(load, caps, training=True, dtype=dtype)
        if lora_reason:
            dropped.append(("train", f"rule quant-lora: {lora_reason}"))
        elif train_reason:
            dropped.append(("train", f"rule host: {train_reason}"))
    if len(dropped) == len(cell.workloads):
        return dataclasses.replace(cell, skip_reason=dropped[0][1])
    return dataclasses.replace(cell, dropped=tuple(dropped))
