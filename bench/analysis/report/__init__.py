"""Render a run directory: records.parquet, records.csv, report.md and report.html.

The report is what people read to choose a configuration, so every number in it comes from a record, a
missing value shows as "–" (never 0), and every string taken from a record is escaped: model names and
error messages are user input. The frame's columns, units and meaning are documented in docs/schema.md
under REPORT_SCHEMA_VERSION. Modules: tables (format-free), markdown, plots, html_page, files (render).
"""

from __future__ import annotations

from bench.analysis.frame import IDENTITY, REPORT_SCHEMA_VERSION, to_frame
from bench.analysis.report.files import OUTPUTS, render
from bench.analysis.report.plots import pareto_front
from bench.analysis.report.tables import peak_source
from bench.analysis.values import MISSING, fmt_bytes, fmt_rate, fmt_seconds, is_missing, knob_text, number
from bench.errors import ReportError
from bench.schema import KNOBS, WORKLOADS

__all__ = [
    "IDENTITY",
    "KNOBS",
    "MISSING",
    "OUTPUTS",
    "REPORT_SCHEMA_VERSION",
    "WORKLOADS",
    "ReportError",
    "fmt_bytes",
    "fmt_rate",
    "fmt_seconds",
    "is_missing",
    "knob_text",
    "number",
    "pareto_front",
    "peak_source",
    "render",
    "to_frame",
]
