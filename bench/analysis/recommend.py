"""Choose a configuration for a memory budget and a task from a run's measurements.

A recommendation is only as good as its reasons, so it names the memory source it trusted, how much room
the choice leaves, how it compares with the runner-up, and, when nothing fits, the smallest peak seen.
Memory sources are tried in the order that best predicts what a GPU of that size will hold: the torch
allocator's reserved peak, then the NVML per-process peak, then the process RSS (CPU runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bench import units
from bench.analysis.frame import rows, to_frame
from bench.analysis.values import is_missing, knob_text, number
from bench.errors import RecommendError
from bench.schema import DECODE_CACHE_COLUMN, KNOBS, PEAK_SOURCES

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

__all__ = [
    "OBJECTIVES",
    "TASKS",
    "Choice",
    "RecommendError",
    "Recommendation",
    "parse_margin",
    "print_recommendation",
    "recommend",
]

TASKS = ("train", "infer")
OBJECTIVES = ("throughput", "memory", "balanced")
PHASES = {"train": ("train",), "infer": ("prefill", "decode")}
# (column suffix, words): the first source a cell recorded is the one its peak comes from.
SOURCES = PEAK_SOURCES["budget"]
GIB = float(1 << 30)


@dataclass(frozen=True)
class Choice:
    """One measured cell as a candidate: its knobs, throughput and peak memory for the task."""

    cell_id: str
    label: str
    knobs: dict[str, Any]
    throughput: float  # tok/s of the task's main metric
    throughput_metric: str
    prefill_tokens_per_s: float | None
    peak_bytes: float
    memory_source: str  # words, e.g. "torch reserved peak"
    memory_column: str  # the column the peak came from (the largest phase)
    throughput_p10: float | None = None
    throughput_p90: float | None = None
    compile_s: float | None = None  # decode=compiled: the one-off compile, never part of the throughput

    def spare(self, budget: float) -> float:
        return budget - self.peak_bytes

    def score(self, objective: str) -> tuple[float, float]:
        """Higher is better; ties broken by throughput."""
        if objective == "memory":
            return (-self.peak_bytes, self.throughput)
        if objective == "balanced":
            return (self.throughput / (self.peak_bytes / GIB), self.throughput)
        return (self.throughput, -self.peak_bytes)


@dataclass(frozen=True)
class Recommendation:
    task: str
    objective: str
    vram_bytes: float
    margin: float
    best: Choice | None
    runner_up: Choice | None
    reasons: list[str]
    candidates: int = 0  # ok cells with both a throughput and a peak for the task
    fitting: int = 0
    smallest: Choice | None = None  # the smallest peak seen, fitting or not
    memory_sources: list[str] = field(default_factory=list)
    knobs: list[str] = field(default_factory=list)  # the knobs that tell candidates apart, for describe()

    @property
    def budget_bytes(self) -> float:
        return self.vram_bytes * (1 - self.margin)

    @property
    def fits(self) -> bool:
        return self.best is not None


# --- candidates -----------------------------------------------------------------------------------------


def _peak(row: dict[str, Any], phases: tuple[str, ...]) -> tuple[float, str, str] | None:
    """(bytes, source words, column) of a cell's task peak, from the first source that recorded it."""
    for suffix, words in SOURCES:
        values = [(number(row.get(f"mem.{p}.{suffix}")), f"mem.{p}.{suffix}") for p in phases]
        present = [(v, c) for v, c in values if v is not None and v > 0]
        if present:
            value, column = max(present)
            return value, words, column
    return None


def throughput_metric(frame: pd.DataFrame, task: str) -> str:
    """train: train tok/s; infer: decode tok/s, or prefill tok/s when no cell decoded."""
    if task == "train":
        return "train.tokens_per_s"
    decoded = "decode.tokens_per_s" in frame.columns and frame["decode.tokens_per_s"].notna().any()
    return "decode.tokens_per_s" if decoded else "prefill.tokens_per_s"


def candidates(frame: pd.DataFrame, task: str) -> list[Choice]:
    """Ok cells with both the task's throughput and a peak memory for its phases."""
    metric = throughput_metric(frame, task)
    ok = frame[frame["status"] == "ok"]
    if metric not in ok.columns:
        return []
    columns = [c for c in ok.columns if c.startswith("mem.") or c in (*KNOBS, "cell_id", "label")]
    columns += [metric, f"{metric}.p10", f"{metric}.p90", "prefill.tokens_per_s", DECODE_CACHE_COLUMN]
    columns += ["decode.compile_s"]
    out = []
    for row in rows(ok, columns):
        rate, peak = number(row.get(metric)), _peak(row, PHASES[task])
        if rate is None or peak is None:
            continue
        knobs = {k: row.get(k) for k in KNOBS}
        if task == "train":  # the decode mode changes generation only
            knobs.pop("decode", None)
        if task == "infer":  # what differs at inference is the KV cache (checkpointing only turns it off)
            del knobs["grad_ckpt"]
            cache = row.get(DECODE_CACHE_COLUMN)
            knobs["kv_cache"] = None if is_missing(cache) else bool(cache)
        prefill = number(row.get("prefill.tokens_per_s"))
        spread = number(row.get(f"{metric}.p10")), number(row.get(f"{metric}.p90"))
        out.append(
            Choice(
                str(row["cell_id"]),
                str(row.get("label") or ""),
                knobs,
                rate,
                metric,
                prefill,
                *peak,
                *spread,
                compile_s=number(row.get("decode.compile_s")) if task == "infer" else None,
            )
        )
    return out


# --- describing choices ---------------------------------------------------------------------------------


def _knob_words(name: str, value: Any) -> str:
    """A knob value in a sentence: "checkpointing", "unquantized", "batch 4"."""
    if name == "grad_ckpt":
        return "checkpointing" if value else "no checkpointing"
    if name == "quant" and value == "none":
        return "unquantized"
    if name == "use_cache":
        return f"KV cache {knob_text(name, value)}"
    if name == "kv_cache":
        return "KV cache unknown" if value is None else f"KV cache {'on' if value else 'off'}"
    if name == "decode":
        words = {"dynamic": "dynamic KV cache", "static": "static KV cache", "compiled": "compiled decode"}
        return words.get(str(value), knob_text(name, value))
    if name in ("batch", "seq", "threads"):
        return f"{name} {knob_text(name, value)}"
    if name == "new_tokens":
        return f"{knob_text(name, value)} new tokens"
    return knob_text(name, value)


def _varying(choices: list[Choice]) -> list[str]:
    names = [k for k in (*KNOBS, "kv_cache") if any(k in c.knobs for c in choices)]
    return [k for k in names if len({_knob_words(k, c.knobs.get(k)) for c in choices}) > 1]


def describe(choice: Choice, knobs: list[str]) -> str:
    """The choice by the knobs that tell candidates apart, e.g. "bfloat16 + sdpa + checkpointing"."""
    words = [_knob_words(k, choice.knobs.get(k)) for k in knobs]
    return " + ".join(words) if words else (choice.label or choice.cell_id)


def difference(other: Choice, best: Choice) -> str:
    """`other` by only the knobs where it differs from `best`: "nf4", "eager + no checkpointing"."""
    names = [k for k in (*KNOBS, "kv_cache") if k in other.knobs or k in best.knobs]
    differing = [k for k in names if _knob_words(k, other.knobs.get(k)) != _knob_words(k, best.knobs.get(k))]
    return describe(other, differing) if differing else f"cell {other.cell_id}"


def _bytes(value: float) -> str:
    return units.fmt_bytes(value)


def _rate(choice: Choice) -> str:
    main = f"{choice.throughput_metric.split('.')[0]} {units.fmt_rate(choice.throughput)}"
    if choice.throughput_metric == "decode.tokens_per_s" and choice.prefill_tokens_per_s is not None:
        main += f" (prefill {units.fmt_rate(choice.prefill_tokens_per_s)})"
    if choice.compile_s is not None:
        main += f" after compiling once for {units.fmt_seconds(choice.compile_s)}"
    return main


def _percent(value: float) -> str:
    return f"{value:.0f} %" if abs(value) >= 1 else f"{value:.1f} %"


def _versus(best: Choice, runner: Choice, objective: str, budget: float, knobs: list[str]) -> str:
    """The sentence that says why the best beats the runner-up under this objective."""
    head, other, spare = describe(best, knobs), difference(runner, best), _bytes(best.spare(budget))
    if objective == "memory":
        saved = runner.peak_bytes - best.peak_bytes
        return f"{head}: needs {_bytes(saved)} less than {other}, fits with {spare} to spare."
    if objective == "balanced":
        mine, theirs = best.score("balanced")[0], runner.score("balanced")[0]
        return (
            f"{head}: {units.fmt_rate(mine, 'tok/s per GiB')} against {units.fmt_rate(theirs, 'tok/s per GiB')} "
            f"for {other}, fits with {spare} to spare."
        )
    if tied(best, runner):
        return (
            f"{head}: tied with {other} (their p10–p90 tok/s intervals overlap: "
            f"{_interval(best)} against {_interval(runner)}), fits with {spare} to spare."
        )
    gain = (best.throughput / runner.throughput - 1) * 100 if runner.throughput else 0.0
    speed = f"{_percent(gain)} faster than" if gain > 0 else "as fast as"
    return f"{head}: {speed} {other}, fits with {spare} to spare."


def tied(a: Choice, b: Choice) -> bool:
    """The two throughputs' p10–p90 intervals overlap: no "faster" can be said of either."""
    if None in (a.throughput_p10, a.throughput_p90, b.throughput_p10, b.throughput_p90):
        return False
    return bool((a.throughput_p10 or 0.0) <= (b.throughput_p90 or 0.0)) and bool(
        (b.throughput_p10 or 0.0) <= (a.throughput_p90 or 0.0)
    )


def _interval(c: Choice) -> str:
    return f"{units.fmt_rate(c.throughput_p10)}–{units.fmt_rate(c.throughput_p90)}"


# --- the recommendation ---------------------------------------------------------------------------------


def _budget_words(vram: float, margin: float, memory: str = "VRAM") -> str:
    return f"{memory} {_bytes(vram * (1 - margin))} ({_bytes(vram)} less a {_percent(margin * 100)} margin)"


def memory_kind(sources: list[str]) -> str:
    """ "RAM" when every peak is the process's RSS (a CPU run), else "VRAM": the budget is named for it."""
    return "RAM" if sources and all(source.startswith("RSS") for source in sources) else "VRAM"


def _check_request(vram_bytes: float, task: str, objective: str, margin: float) -> None:
    if task not in TASKS:
        raise RecommendError(f"task {task!r} is not known; use one of: {', '.join(TASKS)}.")
    if objective not in OBJECTIVES:
        raise RecommendError(f"objective {objective!r} is not known; use one of: {', '.join(OBJECTIVES)}.")
    if not 0 <= margin < 1:
        raise RecommendError(f"margin {margin!r} must be at least 0 and below 1 (0.1 keeps 10 % free).")
    if not vram_bytes > 0:
        raise RecommendError(f"vram {vram_bytes!r} must be larger than zero.")


def recommend(
    run_dir: str | os.PathLike[str],
    vram_bytes: float | str,
    task: str,
    objective: str = "throughput",
    margin: float = 0.10,
) -> Recommendation:
    """The best ok configuration whose task peak fits vram × (1 - margin), with a runner-up and reasons.

    vram_bytes may be a size text such as "24GiB"; a bad one raises a one-sentence LoadConfigError.
    """
    if isinstance(vram_bytes, str):
        vram_bytes = units.parse_size(vram_bytes, "vram")
    _check_request(vram_bytes, task, objective, margin)
    return choose(to_frame(run_dir), vram_bytes, task, objective, margin)


def choose(
    frame: pd.DataFrame, vram_bytes: float, task: str, objective: str, margin: float
) -> Recommendation:
    """recommend() on a frame already read; --find-max rows add what fits as a last reason."""
    from bench.analysis.fits import fit_sentence

    rec = _choose(frame, vram_bytes, task, objective, margin)
    fits = fit_sentence(frame, task, vram_bytes)
    return replace(rec, reasons=[*rec.reasons, fits]) if fits else rec


def _choose(
    frame: pd.DataFrame, vram_bytes: float, task: str, objective: str, margin: float
) -> Recommendation:
    _check_request(vram_bytes, task, objective, margin)
    empty = Recommendation(task, objective, float(vram_bytes), margin, best=None, runner_up=None, reasons=[])
    pool = candidates(frame, task)
    if not pool:
        return replace(empty, reasons=[_nothing_measured(frame, task)])
    budget = vram_bytes * (1 - margin)
    fitting = sorted(
        (c for c in pool if c.peak_bytes <= budget), key=lambda c: c.score(objective), reverse=True
    )
    smallest = min(pool, key=lambda c: c.peak_bytes)
    knobs = _varying(pool)
    measured = replace(
        empty,
        candidates=len(pool),
        fitting=len(fitting),
        smallest=smallest,
        memory_sources=sorted({c.memory_source for c in pool}),
        knobs=knobs,
    )
    if not fitting:
        reason = (
            f"Nothing fits: the smallest {task} peak measured is {_bytes(smallest.peak_bytes)} "
            f"({describe(smallest, knobs)}, {smallest.memory_source}), over the budget of "
            f"{_budget_words(vram_bytes, margin, memory_kind(measured.memory_sources))}."
        )
        return replace(measured, reasons=[reason])
    best, runner = fitting[0], (fitting[1] if len(fitting) > 1 else None)
    reasons = _reasons(pool, fitting, best, runner, objective, vram_bytes, margin, knobs)
    return replace(measured, best=best, runner_up=runner, reasons=reasons)


def _nothing_measured(frame: pd.DataFrame, task: str) -> str:
    metric = throughput_metric(frame, task)
    ok = int((frame["status"] == "ok").sum()) if "status" in frame.columns else 0
    return (
        f"No ok cell recorded both {metric} and a peak memory for {task} ({ok} ok cell(s) in the run); "
        f"run the {'train' if task == 'train' else 'prefill and decode'} workload(s) first."
    )


def _reasons(
    pool: list[Choice],
    fitting: list[Choice],
    best: Choice,
    runner: Choice | None,
    objective: str,
    vram: float,
    margin: float,
    knobs: list[str],
) -> list[str]:
    budget = vram * (1 - margin)
    reasons = [
        f"{describe(best, knobs)} (cell {best.cell_id}): {_rate(best)}, peak {_bytes(best.peak_bytes)} "
        f"({best.memory_source}, {best.memory_column}), within "
        f"{_budget_words(vram, margin, memory_kind(sorted({c.memory_source for c in pool})))}."
    ]
    if runner is not None:
        reasons.append(_versus(best, runner, objective, budget, knobs))
    else:
        reasons.append(f"{describe(best, knobs)} is the only measured configuration that fits.")
    reasons.append(f"{len(fitting)} of {len(pool)} measured configurations fit.")
    fastest = max(pool, key=lambda c: c.throughput)
    if fastest.peak_bytes > budget:
        reasons.append(
            f"The fastest, {describe(fastest, knobs)} ({_rate(fastest)}), needs {_bytes(fastest.peak_bytes)} "
            "and does not fit."
        )
    return reasons


# --- command line ---------------------------------------------------------------------------------------


def parse_margin(text: str) -> float:
    """'0.1' or '10%' -> 0.1; anything else is a one-sentence error."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise RecommendError(f"--margin={text!r} is not a fraction; write it like 0.1 or 10%.") from None
    if not 0 <= value < 1:
        raise RecommendError(f"--margin={text!r} must be at least 0 and below 1 (0.1 keeps 10 % free).")
    return value


def _choice_row(role: str, choice: Choice, knobs: list[str], budget: float) -> list[str]:
    return [
        role,
        describe(choice, knobs),
        _rate(choice),
        _bytes(choice.peak_bytes),
        _bytes(choice.spare(budget)),
    ]


def print_recommendation(rec: Recommendation, console: Console) -> None:
    """A small table of the pick and the runner-up, then the reasons as sentences."""
    from rich.table import Table
    from rich.text import Text

    memory = memory_kind(rec.memory_sources)
    title = f"{rec.task}, {rec.objective}: budget {_budget_words(rec.vram_bytes, rec.margin, memory)}"
    if memory == "RAM":
        title += " (a CPU run: the budget is RAM, measured as the cell process's RSS peak)"
    if rec.best is not None:
        knobs = rec.knobs
        table = Table(title=Text(title))
        for column in ("", "configuration", "throughput", "peak", "spare"):
            table.add_column(column)
        table.add_row(*map(Text, _choice_row("pick", rec.best, knobs, rec.budget_bytes)))
        if rec.runner_up is not None:
            table.add_row(*map(Text, _choice_row("runner-up", rec.runner_up, knobs, rec.budget_bytes)))
        console.print(table)
    else:
        console.print(Text(title))
    for reason in rec.reasons:
        console.print(Text(f"- {reason}"))
