"""The record's vocabulary, declared once: statuses, knob columns, workloads, phases and the metric registry.

Every module that reads or writes a record takes its names from here (pyperf keeps its metadata the same
way), so a status or a metric cannot mean one thing in the store and another in compare. A metric's unit,
direction and kind come from its registry entry, never from guessing at its name's suffix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

__all__ = [
    "AB_COLUMNS",
    "AB_KEY",
    "AB_SIDES",
    "ALL_STATUSES",
    "ATTN_KERNEL_COLUMN",
    "CI_LEVEL",
    "DECODE_CACHE_COLUMN",
    "DECODE_MODES",
    "DRIFT_KEY",
    "DRIFT_POINTS",
    "FAILED_STATUSES",
    "FINAL_STATUSES",
    "FIND_MAX_TARGETS",
    "FIT_COLUMNS",
    "FIT_VERDICTS",
    "KNOBS",
    "KNOB_DEFAULTS",
    "MATCH_KNOBS",
    "METRICS",
    "MISSING_STATUS",
    "MODEL_COLUMNS",
    "MODEL_SOURCES",
    "NON_FINAL_STATUSES",
    "PEAK_SOURCES",
    "PHASES",
    "RECIPROCALS",
    "SAMPLE_SUFFIXES",
    "SCHEMA_VERSION",
    "SPEC_HASH",
    "STATUSES",
    "STOP_REASONS",
    "TIME_ACCOUNTING_KEY",
    "TIME_COLUMNS",
    "TIME_STAGES",
    "TRAIN_MODES",
    "WEIGHTS",
    "WORKLOADS",
    "Metric",
    "cell_label",
    "default_train_mode",
    "is_memory",
    "metric",
    "record_label",
    "sampled_metrics",
]

# Bump when the meaning or layout of run.json or a record changes; resume refuses a different version.
SCHEMA_VERSION = 1

# --- statuses --------------------------------------------------------------------------------------------
# Final: every planned cell ends with exactly one of these per run.
FINAL_STATUSES = frozenset({"ok", "skipped", "unsupported", "oom", "timeout", "crashed", "error", "invalid"})
# Not final: a cell killed by Ctrl-C is recorded so the user sees it, and `--resume` runs it again.
NON_FINAL_STATUSES = frozenset({"interrupted"})
ALL_STATUSES = FINAL_STATUSES | NON_FINAL_STATUSES
# Final statuses that mean the cell started and did not give numbers.
FAILED_STATUSES = frozenset({"unsupported", "oom", "timeout", "crashed", "error", "invalid"})
# Readers' name for a planned cell with no final record; never written by a runner.
MISSING_STATUS = "missing"
# The column every record carries: the spec hash of the run that wrote it (run.json's `spec_hash`).
# Readers drop a record whose spec_hash is not its run's.
SPEC_HASH = "spec_hash"
# Display order (reports, summaries).
STATUSES = ("ok", "skipped", "unsupported", "oom", "timeout", "crashed", "error", "invalid", "interrupted")

# --- `loadbench ab` -------------------------------------------------------------------------------------
# An ab run measures every cell on two sides, round after round: a record's `side` says which, and a final
# record is final for its (cell_id, side, round), not for the cell (bench.run.records.record_key).
AB_SIDES = ("base", "new")
AB_COLUMNS = ("side", "ab.round", "ab.slot", "ab.first")  # ab.first: this side went first in its pair
AB_KEY = "ab"  # run.json: the sides, the seed, the rounds and the judgement's settings

# --- knobs, workloads, phases ------------------------------------------------------------------------------
# The record's knob columns, in report order.
KNOBS = (
    "model",
    "dtype",
    "quant",
    "attn",
    "grad_ckpt",
    "use_cache",
    "batch",
    "seq",
    "new_tokens",
    "threads",
    "vram_limit_bytes",
    "train_mode",
    "decode",
)
# How decode generates: "dynamic" (transformers' growing KV cache, what every record before this knob
# measured), "static" (a StaticCache preallocated to prompt + new tokens, no compiling) and "compiled"
# (the static cache with the forward of each generated token torch.compile'd, the compile timed apart).
DECODE_MODES = ("dynamic", "static", "compiled")
# The value a knob had before it was a column: readers give it to records that lack the column.
KNOB_DEFAULTS = {"decode": "dynamic"}
# What a train workload trains: every parameter ("full", AdamW) or LoRA adapters ("lora", peft). The
# default is "full" for unquantized cells and "lora" for k-bit ones (QLoRA); k-bit + full is skipped.
TRAIN_MODES = ("full", "lora")
# --find-max: the shape knob a search maximises under the memory budget.
FIND_MAX_TARGETS = ("batch", "seq")
# The knobs two runs' cells are matched by when their checkpoints differ (so `model` is not one of them).
MATCH_KNOBS = (
    "dtype",
    "quant",
    "attn",
    "grad_ckpt",
    "use_cache",
    "batch",
    "seq",
    "new_tokens",
    "threads",
    "decode",
)
WORKLOADS = ("prefill", "train", "decode")
# Memory phases: the load and each workload.
PHASES = ("load", "prefill", "decode", "train")

# Where a cell's model came from (bench.plan.models resolves it in this order) and which weights it had.
MODEL_SOURCES = ("local", "hf-cache", "hub", "preset")
WEIGHTS = ("real", "random")
# Record columns that say what model a cell measured, beside the knobs (not part of cell_id: the
# checkpoint fingerprint already tells real from random weights).
MODEL_COLUMNS = ("model_source", "weights", "trust_remote_code")

# --- metrics ---------------------------------------------------------------------------------------------
Better = Literal["higher", "lower"]
Kind = Literal["time", "throughput", "memory", "quality", "energy", "ratio", "count"]


@dataclass(frozen=True)
class Metric:
    """One record column that holds a measurement."""

    name: str
    unit: str  # "s", "bytes", "tokens/s", "J", "J/token", "fraction", "ratio", "nats", "FLOPs", "count"
    better: Better | None
    kind: Kind
    sampled: bool = False  # True: the record holds .p10/.p90/.iqr/.n/.samples beside the median
    fmt: str = "{:.4g}"


# Throughputs computed sample by sample from a timed metric (tokens / seconds): one measurement under two
# names. `ab` tests the time and gives its throughput the same verdict, so the family of tests is not
# doubled by a metric that cannot disagree with its twin.
RECIPROCALS = {"prefill.tokens_per_s": "prefill.latency_s", "train.tokens_per_s": "train.step_s"}


def _m(name: str, unit: str, better: Better | None, kind: Kind, sampled: bool = False) -> Metric:
    return Metric(name, unit, better, kind, sampled)


_FIXED: tuple[Metric, ...] = (
    _m("load.tokenizer_s", "s", "lower", "time"),
    _m("load.config_s", "s", "lower", "time"),
    _m("load.model_s", "s", "lower", "time", sampled=True),  # repeated loads, warm page cache
    _m("load.model_first_s", "s", "lower", "time"),  # the cell's first (coldest) load, kept apart
    _m("load.first_forward_s", "s", "lower", "time"),
    _m("load.read_floor_s", "s", "lower", "time"),
    _m("load.read_floor_bytes", "bytes", None, "memory"),
    _m("load.model_over_floor", "ratio", "lower", "ratio"),
    _m("prefill.latency_s", "s", "lower", "time", sampled=True),
    _m("prefill.tokens_per_s", "tokens/s", "higher", "throughput", sampled=True),
    _m("train.step_s", "s", "lower", "time", sampled=True),
    _m("train.tokens_per_s", "tokens/s", "higher", "throughput", sampled=True),
    _m("decode.ttft_s", "s", "lower", "time", sampled=True),
    _m("decode.tpot_s", "s", "lower", "time", sampled=True),
    _m("decode.tokens_per_s", "tokens/s", "higher", "throughput", sampled=True),
    # decode=compiled: what compiling added to the first generation (never part of a timed sample), the
    # graphs torch.compile built and the graph breaks it hit while doing so
    _m("decode.compile_s", "s", "lower", "time"),
    _m("decode.compiled_graphs", "count", None, "count"),
    _m("decode.graph_breaks", "count", None, "count"),
    _m("prefill.flops_per_token", "FLOPs", None, "count"),
    _m("train.flops_per_token", "FLOPs", None, "count"),
    _m("prefill.mfu", "fraction", "higher", "ratio"),
    _m("train.mfu", "fraction", "higher", "ratio"),
    _m("decode.mbu", "fraction", "higher", "ratio"),
    _m("mem.footprint_bytes", "bytes", "lower", "memory"),
    _m("quality.kl", "nats", "lower", "quality"),
    _m("quality.top1_agree", "fraction", "higher", "quality"),
    _m("quality.ppl", "ratio", "lower", "quality"),
    _m("quality.ppl_delta", "ratio", None, "quality"),
    _m("train.trainable_params", "count", None, "count"),
    # --find-max: the largest batch (or seq) whose step fitted the budget, how many real steps the search
    # took, what the analytical estimate alone predicted, and the budget peak of the step at the answer.
    _m("max.batch", "count", "higher", "count"),
    _m("max.seq", "count", "higher", "count"),
    _m("max.probes", "count", None, "count"),
    _m("max.estimate", "count", None, "count"),
    _m("max.peak_bytes", "bytes", None, "memory"),
    _m("max.budget_bytes", "bytes", None, "memory"),
)
# --- samples ---------------------------------------------------------------------------------------------
# The companions a sampled metric keeps beside its median: `<metric>.<suffix>`.
# ci_low/ci_high: the CI_LEVEL confidence interval of the median from order statistics (distribution-free);
# blocks: how many time-separated blocks the samples were taken in; stop: why sampling stopped.
SAMPLE_SUFFIXES = ("p10", "p90", "iqr", "n", "noisy", "samples", "ci_low", "ci_high", "blocks", "stop")
CI_LEVEL = 0.95
# The fewest samples a run takes of each timed metric (`--min-samples`, whatever the budget): with 5 against 5
# the smallest two-sided Mann-Whitney p is 2/252, which no metric reaches among the ~190 a default comparison
# tests, so compare could flag a single metric only from 10 (2/184756); scripts/compare_power.py shows it.
MIN_SAMPLES = 10
# `<metric>.stop`: "settled" (the median's interval is narrow and the block medians agree), "max_n" (the
# sample cap came first), "budget" (the time budget ran out before it settled: the interval is the honest
# width, do not read the median alone), "fixed" (a caller asked for exactly n samples).
STOP_REASONS = ("settled", "max_n", "budget", "fixed")
# Whether decode ran with the KV cache (the resolved value of the `use_cache` knob), on every decode record.
DECODE_CACHE_COLUMN = "decode.use_cache"
# Which kernel torch's scaled_dot_product_attention ran in a probe forward of the prefill shape (math,
# flash, efficient, cudnn), read back from the op the profiler saw; null with a reason for other attention.
ATTN_KERNEL_COLUMN = "attn.sdpa_kernel"

# --- run.json: machine drift --------------------------------------------------------------------------------
# run.json[DRIFT_KEY] = {"start": probe, "end": probe, "end_over_start": float | None}: a fixed calibration
# probe measured before the first cell and after the last. probe = {"probe": name, "speed": float (higher is
# faster), "unit": str, "samples": [...], "method": str, "at": ISO time} or {"reason": str} when it failed.
# Two runs' machine-speed ratio is the mean of new's points over the mean of base's (same probe name only).
DRIFT_KEY = "drift"
DRIFT_POINTS = ("start", "end")

# --- run.json: time accounting -------------------------------------------------------------------------------
# run.json[TIME_ACCOUNTING_KEY]: where a run's wall time went (docs/schema.md "run.json: time accounting").
# Stages are the parent's own clock, in run order; stages that overlap another (the template starts while
# the parent probes and plans) count only the time the parent waited for them.
TIME_ACCOUNTING_KEY = "time_accounting"
TIME_STAGES = (
    "startup",  # process start to the run command's clock (interpreter, CLI imports, spec, template begun)
    "probe",  # host capabilities
    "checkpoint",  # resolve (or build) the checkpoint, expand the plan
    "store",  # create the run directory, skipped records
    "template",  # waiting for the warm template to be ready
    "quality_reference",
    "calibration",
    "drift",  # the machine-speed probe (run.json["drift"]) before the first cell and after the last
    "cells",  # dispatch of the first cell to the last record
    "summary",
    "report",
)
# Per record: the cell's wall time (dispatch to result) and the part of it that was measured (its loads
# plus its measured windows); the rest of a cell's time is isolation, imports, warm-ups and untimed probes.
TIME_COLUMNS = ("cell.wall_s", "cell.measured_s")

# Measured memory sources per phase; estimates are predictions, not measurements, and are not judged.
MEMORY_SOURCES = (
    "rss_bytes",
    "torch_allocated_bytes",
    "torch_reserved_bytes",
    "nvml_process_bytes",
    "nvml_device_bytes",
)
_PER_PHASE = tuple(_m(f"mem.{p}.{s}", "bytes", "lower", "memory") for p in PHASES for s in MEMORY_SOURCES)
_ENERGY = tuple(
    m
    for w in WORKLOADS
    for m in (
        _m(f"energy.{w}.j_per_token", "J/token", "lower", "energy"),
        _m(f"energy.{w}.joules", "J", None, "energy"),
    )
)
METRICS: dict[str, Metric] = {m.name: m for m in (*_FIXED, *_PER_PHASE, *_ENERGY)}

# The fit check's columns (bench.plan.fit), on every record: a prediction and a budget, not measurements.
FIT_COLUMNS = (
    "fit.predicted_bytes",
    "fit.predicted_phase",
    "fit.available_bytes",
    "fit.available_source",
    "fit.margin",
    "fit.verdict",
    "fit.reason",
)
# fit.verdict values: fits, exceeds (the cell is skipped), unknown (no prediction or budget), off.
FIT_VERDICTS = ("fits", "exceeds", "unknown", "off")

# Quality closest to the reference wins: "min", "max", or "absmin" (closest to zero).
QUALITY_BEST = {
    "quality.kl": "min",
    "quality.top1_agree": "max",
    "quality.ppl": "min",
    "quality.ppl_delta": "absmin",
}

# The peak-memory rule, by name: the first source a cell recorded is the one its peak comes from.
# "report": the figure a table shows (the allocator's own view on a GPU, else RSS);
# "budget": what must fit a memory budget (reserved includes the allocator's cache; NVML sees the process).
PEAK_SOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "report": (("torch_allocated_bytes", "torch allocated"), ("rss_bytes", "RSS")),
    "budget": (
        ("torch_reserved_bytes", "torch reserved peak"),
        ("nvml_process_bytes", "NVML process peak"),
        ("rss_bytes", "RSS peak"),
    ),
}

_MEMORY = re.compile(r"mem\.(?:footprint_bytes|(?:load|prefill|train|decode)\.(?!estimate)[a-z_]+_bytes)")


def metric(name: str) -> Metric | None:
    """The registry entry of a column, or None when the column is not a metric."""
    return METRICS.get(name)


@lru_cache(maxsize=4096)
def is_memory(name: str) -> bool:
    """A measured memory column (per-phase peaks and the footprint; estimates excluded)."""
    return _MEMORY.fullmatch(name) is not None


def sampled_metrics() -> tuple[str, ...]:
    """The metrics a record keeps with their samples (median, p10, p90, IQR, n)."""
    return tuple(m.name for m in METRICS.values() if m.sampled)


def default_train_mode(quant: str) -> str:
    """What a cell trains when the spec does not say: LoRA adapters on k-bit weights, else everything."""
    return "full" if quant == "none" else "lora"


def cell_label(
    dtype: str,
    quant: str,
    attn: str,
    grad_ckpt: bool,
    use_cache: str,
    train_mode: str | None = None,
    decode: str | None = None,
) -> str:
    """Human name of a cell: dtype/quant/attn/ckpt-or-not/cache-value, as records and reports show it;
    a train mode other than the quantization's default is appended ("/lora" on an unquantized cell), and
    so is a decode mode other than dynamic ("/decode-compiled")."""
    label = f"{dtype}/{quant}/{attn}/{'ckpt' if grad_ckpt else 'no-ckpt'}/cache-{use_cache}"
    if train_mode is not None and train_mode != default_train_mode(quant):
        label += f"/{train_mode}"
    if decode is not None and decode != KNOB_DEFAULTS["decode"]:
        label += f"/decode-{decode}"
    return label


def record_label(record: Mapping[str, Any]) -> str:
    """A record's cell label: its `label` column, else built from its knob columns (older records)."""
    label = record.get("label")
    if label:
        return str(label)
    return cell_label(
        str(record.get("dtype")),
        str(record.get("quant")),
        str(record.get("attn")),
        bool(record.get("grad_ckpt")),
        str(record.get("use_cache")),
        decode=record.get("decode"),
    )
