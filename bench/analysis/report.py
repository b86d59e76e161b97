"""Render a run directory: records.parquet, records.csv, report.md and report.html.

The report is what people read to choose a configuration, so every number in it comes from a record, a
missing value shows as "–" (never 0), and every string taken from a record is escaped: model names and
error messages are user input. The HTML is self-contained (inline CSS and SVG, no script, no network,
a Content-Security-Policy that forbids both) so it opens offline and can be attached to an issue.
The frame's columns, units and meaning are documented in docs/schema.md under REPORT_SCHEMA_VERSION.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import units
from bench.run import store

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from matplotlib.figure import Figure

__all__ = [
    "KNOBS",
    "MISSING",
    "REPORT_SCHEMA_VERSION",
    "WORKLOADS",
    "ReportError",
    "is_missing",
    "knob_text",
    "pareto_front",
    "register",
    "render",
    "to_frame",
]

# Bump when a column of to_frame() changes name, unit or meaning; docs/schema.md documents each version.
REPORT_SCHEMA_VERSION = 1
MISSING = "–"
EXIT_BAD_INPUT = 2

IDENTITY = ("cell_id", "status", "reason", "label", "schema_version")
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
)
WORKLOADS = ("prefill", "train", "decode")
FAILED = ("unsupported", "oom", "timeout", "crashed", "error", "invalid", "interrupted")
# quality.* columns and how to pick the best value: closest to the reference cell wins.
QUALITY_BEST: dict[str, str] = {
    "quality.kl": "min",
    "quality.top1_agree": "max",
    "quality.ppl": "min",
    "quality.ppl_delta": "absmin",
}
# Scatter plots with more points than this embed their points as a PNG inside the SVG: same picture,
# a fraction of the bytes and the time.
RASTER_POINTS = 2000
MAX_CATEGORIES = 30
LABEL_CHARS = 28
OUTPUTS = {"parquet": "records.parquet", "csv": "records.csv", "markdown": "report.md", "html": "report.html"}


class ReportError(store.StoreError):
    """A run directory that cannot be reported on; the message is one sentence a user can act on."""


# --- values ---------------------------------------------------------------------------------------------


def is_missing(value: Any) -> bool:
    """None, NaN and pandas' NA all mean "not measured"."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")


def _is_flag(value: Any) -> bool:
    """numpy booleans are not Python bools but are no measurement either."""
    return getattr(getattr(value, "dtype", None), "kind", None) == "b"


def number(value: Any) -> float | None:
    """A finite float, or None for anything missing or not numeric (a flag or a text is no measurement)."""
    if type(value) is float:  # the common case, first: tables call this for every cell
        return value if math.isfinite(value) else None
    if is_missing(value) or isinstance(value, (bool, str, bytes)) or _is_flag(value):
        return None
    try:
        num = float(value)
    except (TypeError, ValueError):
        return None
    return num if math.isfinite(num) else None


def _or_missing(formatter: Callable[[float], str]) -> Callable[[Any], str]:
    """units.* print "-" for None; the report promises "–" for anything missing, NaN included."""

    def fmt(value: Any) -> str:
        num = number(value)
        return MISSING if num is None else formatter(num)

    return fmt


fmt_bytes = _or_missing(units.fmt_bytes)
fmt_seconds = _or_missing(units.fmt_seconds)
fmt_rate = _or_missing(units.fmt_rate)
fmt_plain = _or_missing(lambda value: f"{value:.4g}")
fmt_rate_bare = _or_missing(lambda value: units.fmt_rate(value, "").strip())


def knob_text(name: str, value: Any) -> str:
    """A knob value as a table shows it: checkpointing as on/off, missing as "–"."""
    if is_missing(value):
        return MISSING
    if name == "grad_ckpt" and (isinstance(value, (bool, int)) or _is_flag(value)):
        return "on" if value else "off"
    if name == "vram_limit_bytes":
        return fmt_bytes(value) if number(value) is not None else str(value)
    if isinstance(value, float) and value.is_integer():  # a knob column with a null reads back as floats
        return str(int(value))
    return str(value)


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- the frame ------------------------------------------------------------------------------------------


def to_frame(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per cell with the columns docs/schema.md documents; StoreError if DIR is not a usable run."""
    frame = read_records(run_dir)
    _check_versions(frame, Path(run_dir))
    return _normalise(frame)


def read_records(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """store.read's rows (each cell's latest final record, env.* joined), built for speed.

    store.read flattens every record through a generic Mapping walk, which costs about a second per
    10,000 records; records are flat by design, so only the rare nested one is flattened here, and the
    environment is joined once per environment instead of once per row.
    """
    import pandas as pd

    run = store.RunStore.open(run_dir)
    records = [_flat(r) for r in _latest_per_cell(run.records())]
    if not records:
        return pd.DataFrame(columns=["cell_id", "status"])
    frame = pd.DataFrame.from_records(records)
    return _join_environment(frame, store.environments(run.meta) or [{}])


def _latest_per_cell(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """As store.read: the latest final record of each cell, or its latest record when none is final."""
    chosen: dict[str, dict[str, Any]] = {}
    for record in records:
        current = chosen.get(record["cell_id"])
        final = record.get("status") in store.FINAL_STATUSES
        if current is None or final or current.get("status") not in store.FINAL_STATUSES:
            chosen[record["cell_id"]] = record
    return list(chosen.values())


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested dicts; a flat record (the normal case) is returned as it is."""
    if prefix == "" and not any(type(v) is dict for v in record.values()):
        return record
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _join_environment(frame: pd.DataFrame, envs: list[dict[str, Any]]) -> pd.DataFrame:
    """env.* columns from the environment each record names by env_index (the first when it names none)."""
    import pandas as pd

    index = frame.pop("env_index") if "env_index" in frame.columns else pd.Series(0, index=frame.index)
    index = pd.to_numeric(index, errors="coerce").fillna(0).astype(int)
    index = index.where((index >= 0) & (index < len(envs)), 0)
    flat_envs = [{f"env.{k}": v for k, v in _flat(env).items()} for env in envs]
    columns = [c for c in dict.fromkeys(k for env in flat_envs for k in env) if c not in frame.columns]
    env_frame = pd.DataFrame({c: [env.get(c) for env in flat_envs] for c in columns})
    joined = env_frame.iloc[index.to_numpy()].reset_index(drop=True)
    joined.index = frame.index
    return pd.concat([frame, joined], axis=1)


def _check_versions(frame: pd.DataFrame, run_dir: Path) -> None:
    """Columns mean different things across record schema versions, so one table cannot mix them."""
    if "schema_version" not in frame.columns:
        return
    versions = sorted({str(v) for v in frame["schema_version"] if not is_missing(v)})
    if len(versions) > 1:
        raise ReportError(
            f"{run_dir} mixes records of schema versions {', '.join(versions)}; "
            "report each loadbench version's results from its own run directory."
        )
    if versions and versions[0] != str(store.SCHEMA_VERSION):
        raise ReportError(
            f"{run_dir} holds records of schema version {versions[0]} but this loadbench reads version "
            f"{store.SCHEMA_VERSION}; render it with the loadbench version that wrote it."
        )


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Guarantee the documented columns and give each column one type, so Parquet and CSV can hold it."""
    frame = frame.copy()
    for column in (*IDENTITY, *KNOBS):
        if column not in frame.columns:
            frame[column] = None
    from pandas.api.types import is_object_dtype

    for column in [c for c in frame.columns if is_object_dtype(frame[c])]:
        if column.endswith(".samples"):
            frame[column] = frame[column].map(lambda v: v if type(v) is list else None)
        else:
            frame[column] = _one_type(frame[column])
    frame.insert(0, "report_schema_version", REPORT_SCHEMA_VERSION)
    return frame[_column_order(list(frame.columns))]


def _one_type(column: pd.Series) -> pd.Series:
    """Lists and dicts (env.*) become JSON text; a column whose records disagree on type becomes text."""
    types = {type(v) for v in column.tolist()} - {type(None), float}
    if types & {list, dict}:
        return column.map(
            lambda v: json.dumps(v, sort_keys=True, default=str) if type(v) in (list, dict) else None
        )
    if len(types) > 1 or (types and any(type(v) is float and not math.isnan(v) for v in column.tolist())):
        return column.map(lambda v: None if is_missing(v) else str(v))
    return column


def _column_order(columns: list[str]) -> list[str]:
    """report_schema_version, identity, knobs, then record columns in record order, env.* last."""
    first = ["report_schema_version", *IDENTITY, *KNOBS]
    rest = [c for c in columns if c not in first]
    return first + [c for c in rest if not c.startswith("env.")] + [c for c in rest if c.startswith("env.")]


# --- files ----------------------------------------------------------------------------------------------


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    """Write beside `path`, then rename: a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def arrow_table(frame: pd.DataFrame) -> pa.Table:
    """The frame as Arrow, converted once for both files."""
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Samples stay lists (Parquet list<double>), so a reader can recompute any statistic."""
    import pyarrow.parquet as pq

    _replace(path, lambda tmp: pq.write_table(table, tmp))


def write_csv(table: pa.Table, path: Path) -> None:
    """CSV has no lists: samples become JSON arrays in their cells (Arrow's writer: fast on 10k rows)."""
    import pyarrow as pa
    import pyarrow.csv

    for index, column in enumerate(table.schema):
        if pa.types.is_list(column.type):
            table = table.set_column(index, column.name, _json_lists(table.column(index)))
    _replace(path, lambda tmp: pyarrow.csv.write_csv(table, tmp))


def _json_lists(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """list<double> -> JSON array text, vectorised; a null list stays null, a null sample is `null`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chunks = []
    for chunk in column.chunks:
        values = pc.fill_null(pc.cast(chunk.values, pa.string()), "null")
        lists = pa.ListArray.from_arrays(chunk.offsets, values, mask=chunk.is_null())
        chunks.append(pc.binary_join_element_wise("[", pc.binary_join(lists, ","), "]", ""))
    return pa.chunked_array(chunks, type=pa.string())


def _write_text(path: Path, text: str) -> None:
    _replace(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --- tables, independent of the output format -----------------------------------------------------------
# Tables are built column by column: a 10,000-cell run makes per-cell objects and repeated lookups costly.


@dataclass(frozen=True)
class Column:
    """One table column: its texts, which rows hold its best value, and whether it is a number."""

    header: str
    texts: list[str]
    best: list[bool] | None = None
    numeric: bool = False


@dataclass
class Table:
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


def _measured(
    header: str, frame: pd.DataFrame, name: str | None, fmt: Callable[[Any], str], rule: str
) -> Column:
    values = _values(frame, name)
    return Column(header, [fmt(v) for v in values], best_flags(values, rule), numeric=True)


def peak_source(frame: pd.DataFrame, workload: str) -> tuple[str | None, str]:
    """The best memory column for a workload: the torch allocator's peak on a GPU, else the RSS peak."""
    for suffix, name in (("torch_allocated_bytes", "torch allocated"), ("rss_bytes", "RSS")):
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
    return Column("tok/s (p10–p90)", texts, best_flags(medians, "max"), numeric=True)


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
    quality = [q for q in QUALITY_BEST if q in measured.columns and measured[q].notna().any()]
    columns += [_measured(q, measured, q, fmt_plain, QUALITY_BEST[q]) for q in quality]
    columns.append(_status_column(measured, workload))
    return Table(workload, columns, _workload_notes(view, measured, unmeasured, workload, mem_column))


def _workload_notes(
    view: View, measured: pd.DataFrame, unmeasured: pd.DataFrame, workload: str, mem_column: str | None
) -> list[str]:
    """The first note explains the columns; the rest name ok cells without this workload and why."""
    source = f"peak memory is {mem_column}" if mem_column else "no cell recorded its peak memory"
    notes = [
        f"{len(measured)} ok cell(s); {source}; load is load.model_s; bold marks the best value in its column."
    ]
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
    statuses = [
        t
        for t in (status_table(view, "skipped", ("skipped",)), status_table(view, "failed", FAILED))
        if t is not None
    ]
    return workloads, statuses


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


def _title(meta: dict[str, Any]) -> str:
    spec = meta.get("spec")
    name = spec.get("name") if isinstance(spec, dict) else None
    return f"loadbench report: {name or 'run'}"


# --- markdown -------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*|\[\]])")
_MD_NEEDS_WORK = re.compile(r"[\\`*|\[\]<>&\s]")


def md_escape(text: str) -> str:
    """Text that cannot break a table, start code, bold, a link or raw HTML."""
    text = str(text)
    if _MD_NEEDS_WORK.search(text.replace(" ", "")) is None:
        return text
    text = " ".join(text.split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def _escaped(texts: list[str], escape: Callable[[str], str]) -> list[str]:
    """Escape each distinct text once: knob columns repeat a handful of values thousands of times."""
    cache = {text: escape(text) for text in set(texts)}
    return [cache[text] for text in texts]


def _md_column(column: Column) -> list[str]:
    texts = _escaped(column.texts, md_escape)
    if column.best is None:
        return texts
    return [f"**{t}**" if best else t for t, best in zip(texts, column.best, strict=True)]


def markdown_table(table: Table) -> list[str]:
    lines = [
        "| " + " | ".join(md_escape(c.header) for c in table.columns) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in table.columns) + "|",
    ]
    cells = [_md_column(c) for c in table.columns]
    lines += ["| " + " | ".join(row) + " |" for row in zip(*cells, strict=True)]
    return lines


def render_markdown(
    title: str, facts: list[tuple[str, str]], workloads: list[Table], statuses: list[Table]
) -> str:
    lines = [f"# {md_escape(title)}", ""]
    lines += [f"- **{md_escape(label)}**: {md_escape(text)}" for label, text in facts]
    for table in workloads:
        lines += [
            "",
            f"## {md_escape(table.title)}",
            "",
            md_escape(table.notes[0]),
            "",
            *markdown_table(table),
        ]
        if len(table.notes) > 1:
            lines += ["", *(f"- {md_escape(note)}" for note in table.notes[1:])]
    if not workloads:
        lines += ["", "No cell finished a workload, so there is nothing to compare."]
    for table in statuses:
        lines += ["", f"## {md_escape(table.title)} cells", "", *markdown_table(table)]
    return "\n".join(lines) + "\n"


# --- plots ----------------------------------------------------------------------------------------------

PALETTE = (
    "#4b7bb5",
    "#5aa36b",
    "#c4923a",
    "#8a63b3",
    "#c0504d",
    "#4aa3a8",
    "#7f7f7f",
    "#b5651d",
    "#6b8e23",
    "#996699",
)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (memory, throughput) points no other point beats on both; sorted by memory."""
    front: list[int] = []
    best = -math.inf
    for _, negative_rate, index in sorted((x, -y, i) for i, (x, y) in enumerate(points)):
        if -negative_rate > best:
            front.append(index)
            best = -negative_rate
    return front


@dataclass(frozen=True)
class Plot:
    caption: str
    svg: str


def _new_figure(width: float, height: float) -> Figure:
    """A figure outside pyplot (no global state, no GUI backend); margins are set by hand because
    automatic layout draws every figure twice."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


_SVG_DROP = re.compile(
    r"<\?xml.*?\?>|<!DOCTYPE.*?>|<!--.*?-->|<metadata>.*?</metadata>|\s+xmlns(?::\w+)?=\"[^\"]*\"", re.S
)
_SVG_ID = re.compile(r"(\bid=\"|xlink:href=\"#|\bhref=\"#|url\(#)")


def svg_text(fig: Figure, prefix: str) -> str:
    """Inline SVG: text drawn as paths (no record string survives as text), no comments, no namespace
    URLs, ids unique to this plot so two plots on one page cannot swap clip paths."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "loadbench"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = _SVG_DROP.sub("", buffer.getvalue()).strip()
    return _SVG_ID.sub(lambda m: f"{m.group(1)}{prefix}-", text)


@dataclass(frozen=True)
class Scatter:
    """One workload's memory/throughput points, its Pareto front and the front's labels."""

    workload: str
    memory_column: str
    memory_name: str
    points: list[tuple[float, float]]  # (peak GiB, median tok/s)
    front: list[int]
    labels: dict[int, str]  # point index -> label, for the front only


def scatter_data(view: View, workload: str) -> Scatter | None:
    """Ok cells with both a peak memory and a median tok/s for this workload."""
    mem_column, mem_name = peak_source(view.ok, workload)
    rate = f"{workload}.tokens_per_s"
    if mem_column is None or rate not in view.ok.columns:
        return None
    data = view.ok.dropna(subset=[mem_column, rate])
    if data.empty:
        return None
    points = list(zip((data[mem_column] / 2**30).tolist(), data[rate].tolist(), strict=True))
    front = pareto_front(points)
    rows = data.iloc[front]
    texts = [knob_texts(rows, k) for k in view.identity]
    labels = {i: _short(" ".join(t[n] for t in texts)) for n, i in enumerate(front)}
    return Scatter(workload, mem_column, mem_name, points, front, labels)


def _draw_scatter(ax: Any, data: Scatter) -> None:
    import numpy as np

    xy = np.asarray(data.points, dtype=float)  # an array, not tuples: matplotlib masks tuples point by point
    ax.scatter(xy[:, 0], xy[:, 1], s=16, color="#7a8ca3", label="cell", rasterized=len(xy) > RASTER_POINTS)
    fx, fy = [data.points[i][0] for i in data.front], [data.points[i][1] for i in data.front]
    ax.plot(fx, fy, drawstyle="steps-post", color="#d0591c", linewidth=1.2)
    ax.scatter(fx, fy, s=40, color="#d0591c", label="Pareto front", zorder=3)
    if len(data.front) <= 12:
        for i in data.front:
            ax.annotate(data.labels[i], data.points[i], fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"peak memory ({data.memory_name}), GiB", fontsize=8)
    ax.set_ylabel("tok/s (median)", fontsize=8)
    ax.set_title(data.workload, fontsize=10)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.margins(0.15, 0.1)  # room for the labels of the front's end points
    ax.legend(loc="lower right", fontsize=7)  # "best" searches every point: a second on 10k cells


def scatter_plot(view: View) -> Plot | None:
    """Peak memory against median tok/s, one panel per workload, the Pareto front marked."""
    panels = [d for d in (scatter_data(view, w) for w in WORKLOADS) if d is not None]
    if not panels:
        return None
    fig = _new_figure(4.2 * len(panels), 4.0)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.86, wspace=0.3)
    for position, data in enumerate(panels, start=1):
        _draw_scatter(fig.add_subplot(1, len(panels), position), data)
    fig.suptitle("peak memory vs throughput", fontsize=11)
    caption = "Peak memory against median tok/s of the ok cells. " + " ".join(
        f"{d.workload}: {len(d.points)} cell(s), {len(d.front)} on the Pareto front (no other cell uses less "
        f"memory, {d.memory_column}, and is faster)."
        for d in panels
    )
    return Plot(caption, svg_text(fig, "scatter"))


def knob_medians(view: View, knob: str, workload: str) -> list[tuple[str, float]]:
    """(value, median tok/s) of the ok cells per value of a knob, at most MAX_CATEGORIES of them."""
    rate = f"{workload}.tokens_per_s"
    if rate not in view.ok.columns:
        return []
    medians = view.ok.groupby(knob, dropna=False, sort=True)[rate].median().dropna()
    return [(knob_text(knob, value), float(median)) for value, median in medians.items()][:MAX_CATEGORIES]


def knob_plot(view: View) -> Plot | None:
    """Median tok/s per value of every varying knob, one panel per workload: which value of a knob pays."""
    panels = []
    for workload in WORKLOADS:
        bars = [
            (knob, value, median)
            for knob in view.varying
            for value, median in knob_medians(view, knob, workload)
        ]
        if bars:
            panels.append((workload, bars))
    if not panels:
        return None
    rows = max(len(bars) for _, bars in panels)
    fig = _new_figure(4.2 * len(panels), 1.3 + 0.22 * rows)
    fig.subplots_adjust(
        left=0.1, right=0.98, bottom=0.6 / (1.3 + 0.22 * rows), top=1 - 0.7 / (1.3 + 0.22 * rows)
    )
    fig.subplots_adjust(wspace=0.55)
    colors = {knob: PALETTE[i % len(PALETTE)] for i, knob in enumerate(view.varying)}
    for position, (workload, bars) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), position)
        labels = [_short(f"{knob}={value}") for knob, value, _ in bars]
        ax.barh(range(len(bars)), [m for _, _, m in bars], color=[colors[k] for k, _, _ in bars])
        ax.set_yticks(range(len(bars)), labels)
        ax.invert_yaxis()
        ax.set_title(workload, fontsize=10)
        ax.set_xlabel("median tok/s", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("median tok/s by knob value", fontsize=11)
    caption = f"Median tok/s of the ok cells grouped by each knob that varies ({', '.join(view.varying)})."
    return Plot(caption, svg_text(fig, "knobs"))


def all_plots(view: View) -> list[Plot]:
    return [p for p in (scatter_plot(view), knob_plot(view)) if p is not None]


# --- HTML -----------------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #1d2733; padding: 0 1em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #cfd6de; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
td.num { text-align: right; white-space: nowrap; }
td.best { background: #e3f4e1; }
figure { margin: 1em 0 2em; }
figure svg { max-width: 100%; height: auto; }
figcaption, p.note { color: #4a5867; font-size: 13px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }
dt { font-weight: 600; }
dd { margin: 0; }
"""
# No script, no network: even a string that escaped escaping could not run or fetch anything.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _html_column(column: Column) -> list[str]:
    open_tag = '<td class="num">' if column.numeric else "<td>"
    best_tag = '<td class="num best"><strong>' if column.numeric else '<td class="best"><strong>'
    texts = _escaped(column.texts, html.escape)
    if column.best is None:
        return [f"{open_tag}{t}</td>" for t in texts]
    return [
        f"{best_tag}{t}</strong></td>" if b else f"{open_tag}{t}</td>"
        for t, b in zip(texts, column.best, strict=True)
    ]


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in table.columns)
    cells = [_html_column(c) for c in table.columns]
    body = "\n".join("<tr>" + "".join(row) + "</tr>" for row in zip(*cells, strict=True))
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _html_notes(notes: Iterable[str]) -> str:
    items = [html.escape(n) for n in notes]
    if not items:
        return ""
    head = f'<p class="note">{items[0]}</p>'
    rest = "".join(f"<li>{n}</li>" for n in items[1:])
    return head + (f'<ul class="note">{rest}</ul>' if rest else "")


def render_html(
    title: str, facts: list[tuple[str, str]], workloads: list[Table], statuses: list[Table], plots: list[Plot]
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts) + "</dl>",
    ]
    if plots:
        parts.append("<h2>plots</h2>")
        parts += [f"<figure>{p.svg}<figcaption>{html.escape(p.caption)}</figcaption></figure>" for p in plots]
    for table in workloads:
        parts += [f"<h2>{html.escape(table.title)}</h2>", _html_notes(table.notes[:1]), html_table(table)]
        parts.append(_html_notes(table.notes[1:]) if len(table.notes) > 1 else "")
    if not workloads:
        parts.append("<p>No cell finished a workload, so there is nothing to compare.</p>")
    for table in statuses:
        parts += [f"<h2>{html.escape(table.title)} cells</h2>", html_table(table)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --- entry points ---------------------------------------------------------------------------------------


def render(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Write records.parquet, records.csv, report.md and report.html (default: into the run directory)."""
    from concurrent.futures import ThreadPoolExecutor

    run_path = Path(run_dir)
    frame = to_frame(run_path)
    meta = store.RunStore.open(run_path).meta
    out = Path(out_dir) if out_dir is not None else run_path
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in OUTPUTS.items()}
    table = arrow_table(frame)
    # Arrow writes without the GIL, so the data files are written while the tables and plots are drawn.
    with ThreadPoolExecutor(max_workers=1) as pool:
        written = pool.submit(_write_data_files, table, paths["parquet"], paths["csv"])
        view = View.of(frame)
        title, facts = _title(meta), summary_facts(view, meta, run_path.resolve())
        workloads, statuses = all_tables(view)
        _write_text(paths["markdown"], render_markdown(title, facts, workloads, statuses))
        _write_text(paths["html"], render_html(title, facts, workloads, statuses, all_plots(view)))
        written.result()
    return paths


def _write_data_files(table: pa.Table, parquet: Path, csv: Path) -> None:
    write_parquet(table, parquet)
    write_csv(table, csv)


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        paths = render(args.dir, args.out)
    except store.StoreError as exc:
        print(f"loadbench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        where = args.out or args.dir
        print(f"loadbench: cannot write the report into {where} ({exc.strerror or exc}).", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in paths.values():
        print(path)
    return 0


def register(subparsers: Any) -> None:
    """Add `loadbench report DIR [--out DIR]`."""
    parser = subparsers.add_parser(
        "report",
        help="render tables and plots of a run directory (Parquet, CSV, Markdown, HTML)",
        description="Write records.parquet, records.csv, report.md and report.html for a run directory.",
    )
    parser.add_argument("dir", metavar="DIR", help="a run directory (holds run.json and records.jsonl)")
    parser.add_argument("--out", metavar="DIR", help="where to write the files (default: DIR itself)")
    parser.set_defaults(func=_cmd_report)
