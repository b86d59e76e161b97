"""The report's tables, independent of the output format: one per workload, then skipped and failed cells.

Every number comes from a record and a missing one shows as "–". Tables are built column by column: a
10,000-cell run makes per-cell objects and repeated lookups costly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.analysis.fits import Fit, fit_rows
from bench.analysis.values import (
    MISSING,
    fmt_bytes,
    fmt_plain,
    fmt_rate,
    fmt_rate_bare,
    fmt_seconds,
    is_missing,
    knob_text,
    number,
)
from bench.schema import (
    FAILED_STATUSES,
    KNOBS,
    MISSING_STATUS,
    NON_FINAL_STATUSES,
    PEAK_SOURCES,
    QUALITY_BEST,
    STATUSES,
    WORKLOADS,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FAILED",
    "Column",
    "Table",
    "View",
    "all_tables",
    "best_flags",
    "fits_tables",
    "knob_texts",
    "peak_source",
    "random_weights",
    "separable_best",
    "status_table",
    "summary_facts",
    "title",
    "workload_table",
]

# The "failed" table: cells that started and gave no numbers, and cells a Ctrl-C left unfinished.
FAILED = tuple(s for s in STATUSES if s in FAILED_STATUSES | NON_FINAL_STATUSES)


@dataclass(frozen=True)
class Column:
    """One table column: its texts, which rows hold its best value, and whether it is a number."""

    header: str
    texts: list[str]
    best: list[bool] | None = None
    numeric: bool = False


@dataclass
class Table:
    """One titled table; the first note explains its columns, the rest name cells it leaves out."""

    title: str
    columns: list[Column]
    notes: list[str] = field(default_factory=list)

    @property
    def header(self) -> list[str]:
        return [c.header for c in self.columns]

    def rows(self) -> list[list[str]]:
        """Plain cell texts, row by row (for tests and summaries)."""
        return [list(row) for row in zip(*(c.texts for c in self.columns), strict=True)]


@dataclass
class View:
    """What every table and plot of one render needs, worked out once."""

    frame: pd.DataFrame
    ok: pd.DataFrame
    varying: list[str]  # knobs with more than one value in this run: the only ones worth a column

    @classmethod
    def of(cls, frame: pd.DataFrame) -> View:
        varying = [k for k in KNOBS if k in frame.columns and frame[k].nunique(dropna=False) > 1]
        return cls(frame, frame[frame["status"] == "ok"], varying)

    @property
    def identity(self) -> list[str]:
        """The columns that tell rows apart: the varying knobs, or the model when nothing varies."""
        return self.varying or ["model"]


def knob_texts(frame: pd.DataFrame, knob: str) -> list[str]:
    """knob_text of a whole column, each distinct value formatted once."""
    cache: dict[Any, str] = {}
    out = []
    for value in _values(frame, knob):
        try:
            text = cache.get(value)
            if text is None:
                text = cache[value] = knob_text(knob, value)
        except TypeError:  # an unhashable value: format it every time
            text = knob_text(knob, value)
        out.append(text)
    return out


def _values(frame: pd.DataFrame, name: str | None) -> list[Any]:
    return frame[name].tolist() if name in frame.columns else [None] * len(frame)


def best_flags(values: list[Any], rule: str) -> list[bool] | None:
    """Which rows hold the best value; None when fewer than two rows have one (nothing to compare)."""
    nums = [number(v) for v in values]
    present = [n for n in nums if n is not None]
    if len(present) < 2:
        return None
    if rule == "absmin":
        target = min(abs(n) for n in present)
        return [n is not None and abs(n) == target for n in nums]
    target = min(present) if rule == "min" else max(present)
    return [n == target for n in nums]


def separable_best(
    medians: list[Any], lows: list[Any], highs: list[Any], rule: str
) -> tuple[list[bool] | None, int]:
    """Best flags only when the best row's p10–p90 interval clears every other row's; else (None, ties).

    A median that wins while its interval overlaps another cell's is no winner: the two are tied.
    """
    flags = best_flags(medians, rule)
    if flags is None or sum(flags) != 1:
        return flags, 0
    best = flags.index(True)
    lo, hi = number(lows[best]), number(highs[best])
    if lo is None or hi is None:
        return flags, 0  # no interval recorded: a single value, compared as such
    others = [i for i in range(len(medians)) if i != best and number(medians[i]) is not None]
    if rule == "max":  # another cell's p90 reaches the best's p10
        ties = sum(1 for i in others if (number(highs[i]) or number(medians[i]) or 0.0) >= lo)
    else:  # another cell's p10 reaches down to the best's p90
        ties = sum(1 for i in others if (number(lows[i]) or number(medians[i]) or 0.0) <= hi)
    return (None, ties) if ties else (flags, 0)


def _measured(
    header: str, frame: pd.DataFrame, name: str | None, fmt: Callable[[Any], str], rule: str
) -> Column:
    values = _values(frame, name)
    flags, _ = separable_best(values, _values(frame, f"{name}.p10"), _values(frame, f"{name}.p90"), rule)
    return Column(header, [fmt(v) for v in values], flags, numeric=True)


def peak_source(frame: pd.DataFrame, workload: str) -> tuple[str | None, str]:
    """The memory column a table shows for a workload: the first source of schema's "report" rule it recorded."""
    for suffix, name in PEAK_SOURCES["report"]:
        column = f"mem.{workload}.{suffix}"
        if column in frame.columns and frame[column].notna().any():
            return column, name
    return None, "no source"


def _rate_column(frame: pd.DataFrame, workload: str) -> Column:
    """Median tok/s with its p10–p90 spread, all three straight from the record."""
    rate = f"{workload}.tokens_per_s"
    medians = _values(frame, rate)
    texts = []
    for median, p10, p90 in zip(
        medians, _values(frame, f"{rate}.p10"), _values(frame, f"{rate}.p90"), strict=True
    ):
        low, high = fmt_rate_bare(p10), fmt_rate_bare(p90)
        spread = "" if MISSING in (low, high) else f" ({low}–{high})"
        texts.append(fmt_rate(median) + spread)
    flags, _ = separable_best(medians, _values(frame, f"{rate}.p10"), _values(frame, f"{rate}.p90"), "max")
    return Column("tok/s (p10–p90)", texts, flags, numeric=True)


def _status_column(frame: pd.DataFrame, workload: str) -> Column:
    """Every row is ok; a timing the runner flagged as noisy says so."""
    flags = _values(frame, f"{workload}.tokens_per_s.noisy")
    return Column("status", ["ok (noisy)" if not is_missing(f) and bool(f) else "ok" for f in flags])


def _planned(frame: pd.DataFrame, workload: str) -> pd.Series:
    """Cells that were asked to run the workload; a record without `workloads` counts as asked."""
    if "workloads" not in frame.columns:
        return frame["status"].notna() | frame["status"].isna()
    return frame["workloads"].map(lambda w: is_missing(w) or workload in str(w).split(","))


def workload_table(view: View, workload: str) -> Table | None:
    """One comparison table: ok cells that measured this workload, best values marked."""
    rate = f"{workload}.tokens_per_s"
    ok = view.ok
    has_rate = ok[rate].notna() if rate in ok.columns else ok["status"].isna()
    measured, unmeasured = ok[has_rate], ok[~has_rate & _planned(ok, workload)]
    if measured.empty and unmeasured.empty:
        return None
    mem_column, mem_name = peak_source(measured, workload)
    columns = [Column(k, knob_texts(measured, k)) for k in view.identity]
    columns += [
        _measured("load", measured, "load.model_s", fmt_seconds, "min"),
        _measured(f"peak memory ({mem_name})", measured, mem_column, fmt_bytes, "min"),
        _rate_column(measured, workload),
    ]
    if (
        workload == "decode"
        and "decode.compile_s" in measured.columns
        and measured["decode.compile_s"].notna().any()
    ):
        # decode=compiled: the one-off compile, timed apart from tok/s (blank for modes that do not compile)
        columns.append(_measured("compile (once)", measured, "decode.compile_s", fmt_seconds, "min"))
    quality = [q for q in QUALITY_BEST if q in measured.columns and measured[q].notna().any()]
    if random_weights(measured):  # divergence from the reference, not accuracy: nothing to crown
        columns += [
            Column(f"{q} (numeric divergence only)", [fmt_plain(v) for v in _values(measured, q)], None, True)
            for q in quality
        ]
    else:
        columns += [_measured(q, measured, q, fmt_plain, QUALITY_BEST[q]) for q in quality]
    columns.append(_status_column(measured, workload))
    return Table(workload, columns, _workload_notes(view, measured, unmeasured, workload, mem_column))


def random_weights(frame: pd.DataFrame) -> bool:
    """The cells ran on random (synthetic) weights: quality columns measure numeric divergence only."""
    if "weights" in frame.columns and (frame["weights"] == "random").any():
        return True
    notes = frame["quality.note"].dropna().astype(str) if "quality.note" in frame.columns else []
    return any("synthetic" in note or "random" in note for note in notes)


def _ties(frame: pd.DataFrame, name: str, rule: str) -> int:
    return separable_best(
        _values(frame, name), _values(frame, f"{name}.p10"), _values(frame, f"{name}.p90"), rule
    )[1]


def _workload_notes(
    view: View, measured: pd.DataFrame, unmeasured: pd.DataFrame, workload: str, mem_column: str | None
) -> list[str]:
    """The first note explains the columns; the rest name ok cells without this workload and why."""
    source = f"peak memory is {mem_column}" if mem_column else "no cell recorded its peak memory"
    first = (
        f"{len(measured)} ok cell(s); {source}; load is load.model_s; bold marks the best value in its column "
        "only where its p10–p90 interval clears every other cell's."
    )
    for name, rule, what in (
        (f"{workload}.tokens_per_s", "max", "tok/s"),
        ("load.model_s", "min", "load"),
    ):
        ties = _ties(measured, name, rule)
        if ties:
            first += (
                f" {what}: the best median is tied with {ties} other cell(s) (p10–p90 overlap), no winner."
            )
    if random_weights(measured):
        first += (
            " Random (synthetic) weights: the quality columns show numeric divergence from the reference "
            "only, not task accuracy."
        )
    notes = [first]
    reasons = [
        c for c in (f"{workload}.skipped_reason", f"{workload}.tokens_per_s.reason") if c in unmeasured
    ]
    texts = {k: knob_texts(unmeasured, k) for k in view.identity}
    for index, row in enumerate(unmeasured[reasons].to_dict("records")):
        who = ", ".join(f"{k}={texts[k][index]}" for k in view.identity)
        why = next((row[r] for r in reasons if not is_missing(row[r])), "no reason recorded")
        notes.append(f"{who}: {workload} not measured ({why}).")
    return notes


def status_table(view: View, title: str, statuses: Sequence[str]) -> Table | None:
    """Cells that did not run or did not finish, each with its reason."""
    rows = view.frame[view.frame["status"].isin(statuses)]
    if rows.empty:
        return None
    columns = [Column(k, knob_texts(rows, k)) for k in view.identity]
    columns.append(Column("status", [str(s) for s in _values(rows, "status")]))
    columns.append(Column("reason", [_reason(r) for r in _values(rows, "reason")]))
    return Table(title, columns)


def _reason(value: Any) -> str:
    return "no reason recorded" if is_missing(value) else " ".join(str(value).split())


def all_tables(view: View) -> tuple[list[Table], list[Table]]:
    """(workload tables, skipped/failed tables) of a run."""
    workloads = [t for t in (workload_table(view, w) for w in WORKLOADS) if t is not None]
    workloads += fits_tables(view.frame)  # --find-max runs: what fits per budget
    statuses = [
        t
        for t in (
            status_table(view, "skipped", ("skipped",)),
            status_table(view, "failed", FAILED),
            status_table(view, "missing (planned, no final record: --resume runs them)", (MISSING_STATUS,)),
        )
        if t is not None
    ]
    return workloads, statuses


def fits_tables(frame: pd.DataFrame) -> list[Table]:
    """One table per budget and target (rows: configurations); [] when no cell ran --find-max."""
    groups: dict[tuple[float | None, str, str], list[Fit]] = {}
    for fit in fit_rows(frame):
        groups.setdefault((fit.budget_bytes, fit.task, fit.target), []).append(fit)
    tables = []
    for (budget, task, target), fits in groups.items():
        columns = [
            Column("configuration", [f.label for f in fits]),
            Column("shape", [f.other for f in fits]),
            Column(f"max {target}", [f.answer_text for f in fits], numeric=True),
            Column(
                "tok/s there",
                [fmt_rate(f.tokens_per_s) if f.tokens_per_s is not None else MISSING for f in fits],
                numeric=True,
            ),
            Column(
                "peak", [fmt_bytes(f.peak_bytes) if f.peak_bytes else MISSING for f in fits], numeric=True
            ),
            Column("estimate", [str(f.estimate) if f.estimate is not None else MISSING for f in fits]),
            Column("probes", [str(f.probes) if f.probes is not None else MISSING for f in fits]),
        ]
        notes = [
            f"Largest {target} whose {'train step' if task == 'train' else 'prefill + decode'} fitted "
            f'{fmt_bytes(budget)}, found by real steps seeded with the estimate. "at least": the cap fitted. '
            "tok/s is measured at that shape only with --at-max; peak is the budget peak of the step there."
        ]
        tables.append(Table(f"what fits in {fmt_bytes(budget)} ({task}, max {target})", columns, notes))
    return tables


# --- the summary at the top -----------------------------------------------------------------------------


def summary_facts(view: View, meta: dict[str, Any], run_dir: Path) -> list[tuple[str, str]]:
    """(label, text) pairs: what ran where, with which versions; all from run.json and the records."""
    frame = view.frame
    env = meta.get("environment") or {}
    counts = frame["status"].value_counts()
    status_text = " · ".join(f"{status} {count}" for status, count in counts.items())
    gpus = [str(g.get("name", "?")) for g in env.get("gpus_detail") or [] if isinstance(g, dict)]
    versions = " · ".join(
        f"{name} {env[key]}"
        for name, key in (
            ("torch", "torch_version"),
            ("transformers", "transformers_version"),
            ("bitsandbytes", "bitsandbytes_version"),
            ("loadbench", "loadbench_version"),
        )
        if env.get(key)
    )
    fixed = [k for k in KNOBS if k not in view.varying and len(frame) and not is_missing(frame[k].iloc[0])]
    return [
        ("run", run_dir.name or str(run_dir)),
        ("created", str(meta.get("created_at") or MISSING)),
        ("cells", f"{len(frame)}: {status_text}" if len(frame) else "0"),
        ("CPU", str(env.get("cpu_model") or MISSING)),
        ("GPU", ", ".join(gpus) or "none"),
        ("versions", versions or MISSING),
        ("commit", str(env.get("git_commit") or MISSING)),
        ("same in every cell", " · ".join(f"{k}={knob_text(k, frame[k].iloc[0])}" for k in fixed) or MISSING),
    ]


def title(meta: dict[str, Any]) -> str:
    """The page title: the spec's name."""
    spec = meta.get("spec")
    name = spec.get("name") if isinstance(spec, dict) else None
    return f"loadbench report: {name or 'run'}"
