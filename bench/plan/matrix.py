"""Matrix specs, cells and the rules that skip cells, each with a reason naming the rule.

A spec names values per axis (dtype, quantization, attention, gradient checkpointing, use_cache),
the workloads and one workload shape. `expand` takes the cross product; every cell appears in the
results, run or skipped, and carries a stable `cell_id`.

The pieces live in their own modules, in pipeline order: bench.plan.spec -> bench.plan.cells ->
bench.plan.rules. This module gathers them under the name callers have always imported.
"""

from __future__ import annotations

from bench.plan.cells import Cell
from bench.plan.rules import apply_rules, expand
from bench.plan.spec import (
    ATTN_VALUES,
    CACHE_VALUES,
    HUB_TO_PRESET,
    LOAD_KNOBS,
    MEASURE_VERSION,
    PRESET_DIR,
    QUANT_VARIANTS,
    SHAPE_KNOBS,
    WORKLOADS,
    MatrixSpec,
    Shape,
    SpecError,
    load_preset,
    recipe_model,
)

__all__ = [
    "ATTN_VALUES",
    "CACHE_VALUES",
    "HUB_TO_PRESET",
    "LOAD_KNOBS",
    "MEASURE_VERSION",
    "PRESET_DIR",
    "QUANT_VARIANTS",
    "SHAPE_KNOBS",
    "WORKLOADS",
    "Cell",
    "MatrixSpec",
    "Shape",
    "SpecError",
    "apply_rules",
    "expand",
    "load_preset",
    "recipe_model",
]
