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

import argparse
import json
import os
import statistics
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.analysis import report
from bench.run import store

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
    "register",
]

FORMATS = ("pytest-benchmark", "github-action-benchmark")
# Timed metrics in seconds with per-sample values: what pytest-benchmark's time columns can hold.
TIMED_METRICS = ("prefill.latency_s", "train.step_s", "decode.ttft_s", "decode.tpot_s")
RATE_METRICS = tuple(f"{w}.tokens_per_s" for w in report.WORKLOADS)
SECONDS_METRICS = ("load.model_s", *TIMED_METRICS)
# The pytest-benchmark release whose JSON layout this mimics (checked against its `compare` command).
PYTEST_BENCHMARK_LAYOUT = "5.3.1"
EXIT_BAD_INPUT = 2


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
    shape = f"b{report.knob_text('batch', row.get('batch'))}-s{report.knob_text('seq', row.get('seq'))}"
    return f"{report.knob_text('model', row.get('model'))}/{row.get('label') or row.get('cell_id')}/{shape}"


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
    wanted = {"cell_id", "label", *report.KNOBS}
    for metric in metrics:
        wanted |= {metric, *(f"{metric}.{s}" for s in ("samples", "p10", "p90", "n"))}
    wanted |= {c for c in frame.columns if c.startswith("mem.")}
    ok = frame[frame["status"] == "ok"]
    return ok[[c for c in ok.columns if c in wanted]].to_dict("records")


def _benchmark(row: dict[str, Any], metric: str, samples: list[float]) -> dict[str, Any]:
    name = f"{metric}[{_cell_name(row)}]"
    return {
        "group": metric,
        "name": name,
        "fullname": f"loadbench::{name}",
        "params": {k: (None if report.is_missing(row.get(k)) else row.get(k)) for k in report.KNOBS},
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
            values = (
                [float(v) for v in samples if report.number(v) is not None]
                if isinstance(samples, list)
                else []
            )
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
    p10, p90 = report.number(row.get(f"{metric}.p10")), report.number(row.get(f"{metric}.p90"))
    if p10 is not None and p90 is not None:
        entry["range"] = f"p10–p90 {p10:.6g}–{p90:.6g}"
    n = report.number(row.get(f"{metric}.n"))
    entry["extra"] = f"cell {row.get('cell_id')}; {metric}" + (f"; n={n:.0f}" if n is not None else "")
    return entry


def github_action_benchmark(frame: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """{"bigger": tok/s entries, "smaller": seconds and peak-bytes entries} of the ok cells."""
    bigger: list[dict[str, Any]] = []
    smaller: list[dict[str, Any]] = []
    for row in _ok_rows(frame, (*RATE_METRICS, *SECONDS_METRICS)):
        cell = _cell_name(row)
        for metric in RATE_METRICS:
            if (value := report.number(row.get(metric))) is not None:
                bigger.append(_entry(f"{metric} [{cell}]", "tok/s", value, row, metric))
        for metric in SECONDS_METRICS:
            if (value := report.number(row.get(metric))) is not None:
                smaller.append(_entry(f"{metric} [{cell}]", "s", value, row, metric))
        for workload in report.WORKLOADS:
            column = _peak_column(row, workload)
            if column is not None:
                smaller.append(_entry(f"{column} [{cell}]", "bytes", float(row[column]), row, column))
    return {"bigger": bigger, "smaller": smaller}


def _peak_column(row: dict[str, Any], workload: str) -> str | None:
    """As in the report: the torch allocator's peak on a GPU, else the RSS peak."""
    for suffix in ("torch_allocated_bytes", "rss_bytes"):
        column = f"mem.{workload}.{suffix}"
        if report.number(row.get(column)) is not None:
            return column
    return None


# --- files and command line -----------------------------------------------------------------------------


def _write_json(path: Path, document: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps(document, indent=2, ensure_ascii=True, allow_nan=False) + "\n", encoding="utf-8"
    )
    os.replace(tmp, path)
    return path


def export_pytest_benchmark(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> Path:
    """Write the pytest-benchmark JSON (default: DIR/pytest-benchmark.json)."""
    frame = report.to_frame(run_dir)
    meta = store.RunStore.open(run_dir).meta
    path = Path(out) if out is not None else Path(run_dir) / "pytest-benchmark.json"
    return _write_json(path, pytest_benchmark(frame, meta))


def _prefix(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None) -> str:
    if out is None:
        return str(Path(run_dir) / "github-action-benchmark")
    text = str(out)
    return text[: -len(".json")] if text.endswith(".json") else text


def export_github_action_benchmark(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """Write `<prefix>.bigger.json` and `<prefix>.smaller.json` (default prefix: DIR/github-action-benchmark)."""
    documents = github_action_benchmark(report.to_frame(run_dir))
    prefix = _prefix(run_dir, out)
    return {
        flavour: _write_json(Path(f"{prefix}.{flavour}.json"), items) for flavour, items in documents.items()
    }


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        if args.format == "pytest-benchmark":
            paths = [export_pytest_benchmark(args.dir, args.out)]
        else:
            paths = list(export_github_action_benchmark(args.dir, args.out).values())
    except store.StoreError as exc:
        print(f"loadbench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"loadbench: cannot write the export to {args.out} ({exc.strerror or exc}).", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in paths:
        print(path)
    return 0


def register(subparsers: Any) -> None:
    """Add `loadbench export DIR --format pytest-benchmark|github-action-benchmark [--out FILE]`."""
    parser = subparsers.add_parser(
        "export",
        help="write a run in pytest-benchmark or github-action-benchmark JSON",
        description=(
            "pytest-benchmark: one JSON file that `pytest-benchmark compare` reads (--out FILE, default "
            "DIR/pytest-benchmark.json). github-action-benchmark: two files, PREFIX.bigger.json for "
            "customBiggerIsBetter (tok/s) and PREFIX.smaller.json for customSmallerIsBetter (seconds, bytes) "
            "(--out PREFIX, default DIR/github-action-benchmark)."
        ),
    )
    parser.add_argument("dir", metavar="DIR", help="a run directory")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument(
        "--out", metavar="FILE", help="output file (pytest-benchmark) or prefix (github-action-benchmark)"
    )
    parser.set_defaults(func=_cmd_export)
