"""Export a run to the formats of existing benchmark tooling, so its history and alerts come for free.

- pytest-benchmark: the JSON layout `pytest --benchmark-json` writes (machine_info, commit_info,
  benchmarks[].stats, datetime, version), so `pytest-benchmark compare A.json B.json` reads two runs.
  One benchmark per ok cell and seconds-based timed metric; its stats are computed from the record's
  samples exactly as pytest-benchmark computes them (Stats in pytest_benchmark/stats.py).
- github-action-benchmark: the `customBiggerIsBetter` and `customSmallerIsBetter` JSON lists, one file
  per flavour because the action reads one tool per file: `<prefix>.bigger.json` (tok/s) and
  `<prefix>.smaller.json` (seconds and bytes).
"""

from __future__ import annotations

import json
import os
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.analysis.frame import Run, frame_of, rows, to_frame
from bench.analysis.values import is_missing, knob_text, number
from bench.fileio import atomic_write_text
from bench.schema import KNOBS, METRICS, PEAK_SOURCES, WORKLOADS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "FORMATS",
    "TIMED_METRICS",
    "benchmark_stats",
    "export_github_action_benchmark",
    "export_pytest_benchmark",
    "github_action_benchmark",
    "pytest_benchmark",
]

FORMATS = ("pytest-benchmark", "github-action-benchmark")
# Timed metrics in seconds with per-sample values: what pytest-benchmark's time columns can hold. The load
# (load.model_s) is one of them since it is sampled from repeated loads; runs older than that have no
# load samples and export no load benchmark, only the github-action-benchmark point.
TIMED_METRICS = tuple(m.name for m in METRICS.values() if m.sampled and m.unit == "s")
RATE_METRICS = tuple(m.name for m in METRICS.values() if m.sampled and m.unit == "tokens/s")
SECONDS_METRICS = TIMED_METRICS
# The pytest-benchmark release whose JSON layout this mimics (checked against its `compare` command).
PYTEST_BENCHMARK_LAYOUT = "5.3.1"


# --- pytest-benchmark -----------------------------------------------------------------------------------


def _quartiles(data: list[float]) -> tuple[float, float]:
    """Q1 and Q3 by pytest-benchmark's rule (Wikipedia methods 3 and 2), so `compare` shows equal numbers."""
    n = len(data)
    if n == 1:
        return data[0], data[0]
    if n % 2:
        k, r = n // 4, n % 4
        if r == 1:
            return 0.25 * data[k - 1] + 0.75 * data[k], 0.75 * data[3 * k] + 0.25 * data[3 * k + 1]
        return 0.75 * data[k] + 0.25 * data[k + 1], 0.25 * data[3 * k + 1] + 0.75 * data[3 * k + 2]
    return statistics.median(data[: n // 2]), statistics.median(data[n // 2 :])


def benchmark_stats(samples: Sequence[float]) -> dict[str, Any]:
    """pytest-benchmark's `stats` object for one list of per-round seconds (one iteration per round)."""
    data = [float(s) for s in samples]
    ordered = sorted(data)
    q1, q3 = _quartiles(ordered)
    iqr = q3 - q1
    mean = statistics.mean(data)
    stddev = statistics.stdev(data) if len(data) > 1 else 0
    total = sum(data)
    iqr_out = sum(1 for v in data if v < q1 - 1.5 * iqr or v > q3 + 1.5 * iqr)
    std_out = sum(1 for v in data if v < mean - stddev or v > mean + stddev)
    single = len(data) == 1
    return {
        "min": ordered[0],
        "max": ordered[-1],
        "mean": mean,
        "stddev": stddev,
        "rounds": len(data),
        "median": statistics.median(data),
        "iqr": iqr,
        "q1": q1,
        "q3": q3,
        "iqr_outliers": iqr_out,
        "stddev_outliers": std_out,
        "outliers": f"{std_out};{iqr_out}",
        "ld15iqr": data[0] if single else ordered[bisect_left(ordered, q1 - 1.5 * iqr)],
        "hd15iqr": data[0] if single else ordered[bisect_right(ordered, q3 + 1.5 * iqr) - 1],
        "ops": len(data) / total if total else 0,
        "total": total,
        "data": data,
        "iterations": 1,
    }


def _cell_name(row: dict[str, Any]) -> str:
    """Stable across runs of one spec, so `compare` lines up the same cell: model, knobs, shape."""
    shape = f"b{knob_text('batch', row.get('batch'))}-s{knob_text('seq', row.get('seq'))}"
    return f"{knob_text('model', row.get('model'))}/{row.get('label') or row.get('cell_id')}/{shape}"


def _machine_info(meta: dict[str, Any]) -> dict[str, Any]:
    env = meta.get("environment") or {}
    return {
        "node": env.get("hostname") or "",
        "processor": env.get("cpu_model") or "",
        "machine": "",
        "python_implementation": "CPython",
        "python_version": env.get("python_version") or "",
        "release": "",
        "system": "",
        "platform": env.get("platform") or "",
        "cpu": {"brand_raw": env.get("cpu_model") or "", "count": env.get("cpu_cores_logical")},
        "gpus": [g.get("name") for g in env.get("gpus_detail") or [] if isinstance(g, dict)],
        "torch_version": env.get("torch_version"),
        "transformers_version": env.get("transformers_version"),
    }


def _commit_info(meta: dict[str, Any]) -> dict[str, Any]:
    env = meta.get("environment") or {}
    return {
        "id": env.get("git_commit") or "unversioned",
        "time": None,
        "author_time": None,
        "dirty": None,
        "project": "loadbench",
        "branch": None,
    }


def _ok_rows(frame: pd.DataFrame, metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Ok cells as dicts holding only the columns an export needs (a wide frame is slow to convert)."""
    wanted = {"cell_id", "label", *KNOBS}
    for metric in metrics:
        wanted |= {metric, *(f"{metric}.{s}" for s in ("samples", "p10", "p90", "n"))}
    wanted |= {c for c in frame.columns if c.startswith("mem.")}
    ok = frame[frame["status"] == "ok"]
    return rows(ok, [c for c in ok.columns if c in wanted])


def _benchmark(row: dict[str, Any], metric: str, samples: list[float]) -> dict[str, Any]:
    name = f"{metric}[{_cell_name(row)}]"
    return {
        "group": metric,
        "name": name,
        "fullname": f"loadbench::{name}",
        "params": {k: (None if is_missing(row.get(k)) else row.get(k)) for k in KNOBS},
        "param": _cell_name(row),
        "extra_info": {"cell_id": row.get("cell_id"), "unit": "s", "metric": metric},
        "options": {
            "disable_gc": False,
            "timer": "loadbench",
            "min_rounds": len(samples),
            "max_time": None,
            "min_time": None,
            "precision": None,
            "confidence": None,
            "warmup": False,
        },
        "stats": benchmark_stats(samples),
    }


def pytest_benchmark(frame: pd.DataFrame, meta: dict[str, Any]) -> dict[str, Any]:
    """The pytest-benchmark JSON document of a run: one benchmark per ok cell and timed metric."""
    benchmarks = []
    for row in _ok_rows(frame, TIMED_METRICS):
        for metric in TIMED_METRICS:
            samples = row.get(f"{metric}.samples")
            values = [float(v) for v in samples if number(v) is not None] if isinstance(samples, list) else []
            if values:
                benchmarks.append(_benchmark(row, metric, values))
    return {
        "machine_info": _machine_info(meta),
        "commit_info": _commit_info(meta),
        "benchmarks": benchmarks,
        "datetime": meta.get("created_at") or "",
        "version": PYTEST_BENCHMARK_LAYOUT,
    }


# --- github-action-benchmark ----------------------------------------------------------------------------


def _entry(name: str, unit: str, value: float, row: dict[str, Any], metric: str) -> dict[str, Any]:
    """One {name, unit, value, range?, extra?} item; range is the record's own p10–p90 when it has one."""
    entry: dict[str, Any] = {"name": name, "unit": unit, "value": value}
    p10, p90 = number(row.get(f"{metric}.p10")), number(row.get(f"{metric}.p90"))
    if p10 is not None and p90 is not None:
        entry["range"] = f"p10–p90 {p10:.6g}–{p90:.6g}"
    n = number(row.get(f"{metric}.n"))
    entry["extra"] = f"cell {row.get('cell_id')}; {metric}" + (f"; n={n:.0f}" if n is not None else "")
    return entry


def github_action_benchmark(frame: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """{"bigger": tok/s entries, "smaller": seconds and peak-bytes entries} of the ok cells."""
    bigger: list[dict[str, Any]] = []
    smaller: list[dict[str, Any]] = []
    for row in _ok_rows(frame, (*RATE_METRICS, *SECONDS_METRICS)):
        cell = _cell_name(row)
        for metric in RATE_METRICS:
            if (value := number(row.get(metric))) is not None:
                bigger.append(_entry(f"{metric} [{cell}]", "tok/s", value, row, metric))
        for metric in SECONDS_METRICS:
            if (value := number(row.get(metric))) is not None:
                smaller.append(_entry(f"{metric} [{cell}]", "s", value, row, metric))
        for workload in WORKLOADS:
            column = _peak_column(row, workload)
            if column is not None:
                smaller.append(_entry(f"{column} [{cell}]", "bytes", float(row[column]), row, column))
    return {"bigger": bigger, "smaller": smaller}


def _peak_column(row: dict[str, Any], workload: str) -> str | None:
    """As in the report: the first source of schema's "report" peak rule the cell recorded."""
    for suffix, _ in PEAK_SOURCES["report"]:
        column = f"mem.{workload}.{suffix}"
        if number(row.get(column)) is not None:
            return column
    return None


# --- files and command line -----------------------------------------------------------------------------


def _write_json(path: Path, document: Any) -> Path:
    """Strict JSON (no NaN), written atomically: a CI step never reads half a file."""
    return atomic_write_text(path, json.dumps(document, indent=2, ensure_ascii=True, allow_nan=False) + "\n")


def export_pytest_benchmark(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> Path:
    """Write the pytest-benchmark JSON (default: DIR/pytest-benchmark.json)."""
    run = Run.open(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / "pytest-benchmark.json"
    return _write_json(path, pytest_benchmark(frame_of(run), run.meta))


def _prefix(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None) -> str:
    if out is None:
        return str(Path(run_dir) / "github-action-benchmark")
    text = str(out)
    return text[: -len(".json")] if text.endswith(".json") else text


def export_github_action_benchmark(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """Write `<prefix>.bigger.json` and `<prefix>.smaller.json` (default prefix: DIR/github-action-benchmark)."""
    documents = github_action_benchmark(to_frame(run_dir))
    prefix = _prefix(run_dir, out)
    return {
        flavour: _write_json(Path(f"{prefix}.{flavour}.json"), items) for flavour, items in documents.items()
    }
