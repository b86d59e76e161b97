"""`compare`'s output: Markdown for a pull-request comment, or one JSON document for machines.

Markdown leads with the summary line, then regressions and improvements, then the rest folded away; it is
cut to fit GitHub's comment limit. JSON holds every verdict; NaN and infinity become null.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from operator import attrgetter
from typing import Any

from bench.analysis.compare.judging import MEM_ABS_FLOOR_BYTES, MIN_N, SPREAD_MIN_CELLS
from bench.analysis.compare.results import Comparison, MetricResult, StatusChange
from bench.errors import EXIT_BAD_INPUT
from bench.schema import METRICS, is_memory

__all__ = [
    "JSON_FORMAT_VERSION",
    "MARKDOWN_LIMIT",
    "render",
    "render_error",
    "render_json",
    "render_markdown",
    "summary_line",
    "to_dict",
]

JSON_FORMAT_VERSION = 1
# GitHub refuses comment bodies over 65536 characters.
MARKDOWN_LIMIT = 60_000


def _unit(metric: str) -> str:
    """The registry's unit; a memory column the registry does not list is bytes all the same."""
    entry = METRICS.get(metric)
    if entry is not None:
        return entry.unit
    return "bytes" if is_memory(metric) else ""


def fmt_value(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    unit = _unit(metric)
    if unit == "bytes":
        if abs(value) >= 1 << 30:
            return f"{value / (1 << 30):.2f} GiB"
        return f"{value / (1 << 20):.1f} MiB"
    if unit == "tokens/s":
        return f"{value:,.0f} tok/s" if value >= 100 else f"{value:.3g} tok/s"
    if unit == "s":
        if abs(value) < 1e-3:
            return f"{value * 1e6:.3g} µs"
        if abs(value) < 1:
            return f"{value * 1e3:.3g} ms"
        return f"{value:.3g} s"
    return f"{value:.4g}"


def _fmt_change(r: MetricResult) -> str:
    if r.change is None:
        return "–"
    text = f"{r.change * 100:+.1f} %"
    if r.verdict in ("regression", "improvement"):
        text += " (worse)" if r.verdict == "regression" else " (better)"
    return text


def _fmt_evidence(r: MetricResult) -> str:
    if r.kind == "single value":
        return "single value, min-effect only"
    if r.p is None:
        return f"n={r.n_base}/{r.n_new}"
    needed = f", needs ±{r.needed:.0%}" if r.needed is not None else ""
    if r.spread_needed is not None:
        needed += f" and ±{r.spread_needed:.0%} (run-to-run spread)"
    return f"p={r.p:.2g}, q={r.q:.2g}, n={r.n_base}/{r.n_new}{needed}"


def md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt_normalised(r: MetricResult) -> str:
    if r.normalised_change is None:
        return "–"
    return f"{r.normalised_change * 100:+.1f} % ({r.normalised_verdict})"


def _metric_table(
    rows: list[MetricResult], limit: int, *, reason: bool = False, normalised: bool = False
) -> list[str]:
    head = "| cell | metric | BASE | NEW | change | " + ("why not judged |" if reason else "evidence |")
    rule = "|---|---|---:|---:|---:|---|"
    if normalised and not reason:
        head += " normalised by the probe |"
        rule += "---|"
    lines = [head, rule]
    for r in rows[:limit]:
        last = r.reason if reason else _fmt_evidence(r)
        line = (
            f"| {md_cell(r.cell)} | `{r.metric}` | {fmt_value(r.metric, r.base)} | "
            f"{fmt_value(r.metric, r.new)} | {_fmt_change(r)} | {md_cell(last)} |"
        )
        if normalised and not reason:
            line += f" {_fmt_normalised(r)} |"
        lines.append(line)
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more (see `--format json`).")
    return lines


def _status_table(rows: list[StatusChange], limit: int) -> list[str]:
    lines = ["| cell | BASE | NEW | reason |", "|---|---|---|---|"]
    for s in rows[:limit]:
        reason = (s.reason or "")[:200]
        lines.append(f"| {md_cell(s.cell)} | {s.base_status} | {s.new_status} | {md_cell(reason)} |")
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more (see `--format json`).")
    return lines


def summary_line(c: Comparison) -> str:
    """The one line a CI log shows: verdict counts and how cells were matched."""
    counts = c.counts()
    icon = "❌" if c.exit_code else ("⚠️" if c.confounded else "✅")
    reasons = ", ".join(
        f"{v} {k.removeprefix('not_judged.')}" for k, v in counts.items() if k.startswith("not_judged.")
    )
    not_judged = f"{counts['not_judged']} not judged" + (f" ({reasons})" if reasons else "")
    return (
        f"{icon} {counts['regressions']} regression(s), {counts['improvements']} improvement(s), "
        f"{counts['unchanged']} unchanged, {not_judged} · {c.cells_matched} cells matched by {c.matched_by}"
        + (
            f" · confounded by machine drift: {counts['normalised_regressions']} regression(s) once normalised "
            "by the probe"
            if c.confounded
            else ""
        )
    )


def _markdown(c: Comparison, limit: int) -> str:
    out = [f"## loadbench compare: {summary_line(c)}", ""]
    out.append(f"BASE `{c.base_dir}` → NEW `{c.new_dir}` · model `{c.model}`")
    if c.commits[0] != c.commits[1] and any(c.commits):
        out[-1] += f" · commit `{str(c.commits[0])[:12]}` → `{str(c.commits[1])[:12]}`"
    out.append("")
    if c.drift is not None:
        prefix = "> **Confounded:** " if c.confounded else ""
        out += [prefix + c.drift.describe(), ""]
    for note in c.notes:
        out.append(f"> **Note:** {note}")
        out.append("")
    if c.environment:
        out += ["**Environment differences** (timings can differ for these reasons alone):", ""]
        out += ["| | BASE | NEW |", "|---|---|---|"]
        out += [f"| {k} | {md_cell(b)} | {md_cell(n)} |" for k, b, n in c.environment]
        out.append("")
    if c.base_only or c.new_only:
        out += [f"Unmatched cells: {len(c.base_only)} only in BASE, {len(c.new_only)} only in NEW.", ""]
    sections = [
        ("Regressions", c.regressions, c.status_regressions),
        ("Improvements", c.improvements, c.status_improvements),
    ]
    for title, metrics, statuses in sections:
        if not metrics and not statuses:
            continue
        out += [f"### {title} ({len(metrics) + len(statuses)})", ""]
        if statuses:
            out += [*_status_table(statuses, limit), ""]
        if metrics:
            out += [*_metric_table(metrics, limit, normalised=c.confounded), ""]
    other_status = [s for s in c.status_changes if s.verdict == "changed"]
    if other_status:
        out += [f"<details><summary>Status changed, not judged ({len(other_status)})</summary>", ""]
        out += [*_status_table(other_status, limit), "", "</details>", ""]
    unchanged = c.of("no change")
    if unchanged:
        out += [f"<details><summary>Unchanged ({len(unchanged)})</summary>", ""]
        out += [*_metric_table(unchanged, limit, normalised=c.confounded), "", "</details>", ""]
    not_judged = c.of("not judged")
    if not_judged:
        out += [f"<details><summary>Not judged ({len(not_judged)})</summary>", ""]
        out += [*_metric_table(not_judged, limit, reason=True), "", "</details>", ""]
    out.append(
        f"<sub>A metric is a regression or improvement only if a Mann-Whitney U test on its samples "
        f"(Benjamini-Hochberg over {c.tests} tested metrics, q ≤ {c.alpha:g}) and a median change of at "
        f"least max({c.min_effect:.0%}, the metric's IQR/median in either run) both say so, and the change exceeds "
        f"z robust spreads of the same metric's changes across the matched cells (how far one cell moves "
        f"between runs of the same code; z for q over the family, when ≥ {SPREAD_MIN_CELLS} cells have the "
        f"metric): noise raises the change needed, it does not drop the metric; metrics with n < {MIN_N} are not judged; memory is a "
        f"single value judged by the {c.min_effect:.0%} minimum effect (and ≥ 1 MiB) only.</sub>"
    )
    return "\n".join(out) + "\n"


def render_markdown(c: Comparison, *, limit: int = 200, max_chars: int = MARKDOWN_LIMIT) -> str:
    """Markdown for a pull-request comment: summary, regressions, improvements, then details."""
    text = _markdown(c, limit)
    while len(text) > max_chars and limit > 5:
        limit //= 2
        text = _markdown(c, limit)
    return text


def _jsonable(value: Any) -> Any:
    """NaN and infinity are not JSON: null, as everywhere in loadbench."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


_RESULT_FIELDS = tuple(field.name for field in fields(MetricResult))


def to_dict(c: Comparison) -> dict[str, Any]:
    """The comparison as plain JSON-ready data (the `--format json` document)."""
    get = attrgetter(*_RESULT_FIELDS)
    return {
        "format_version": JSON_FORMAT_VERSION,
        "base": c.base_dir,
        "new": c.new_dir,
        "model": c.model,
        "matched_by": c.matched_by,
        "notes": c.notes,
        "environment_differences": [{"field": k, "base": b, "new": n} for k, b, n in c.environment],
        "commits": {"base": c.commits[0], "new": c.commits[1]},
        "settings": {
            "min_effect": c.min_effect,
            "alpha": c.alpha,
            "test": "mann-whitney-u",
            "correction": "benjamini-hochberg",
            "min_n": MIN_N,
            "effect_needed": "max(min_effect, relative IQR of BASE, relative IQR of NEW), and |log change| "
            "above z x the metric's robust run-to-run spread across cells (z = Phi^-1(1 - alpha / (2 tests)))",
            "memory_abs_floor_bytes": MEM_ABS_FLOOR_BYTES,
        },
        "machine_drift": {
            "ratio": c.drift.ratio if c.drift else None,
            "probe": c.drift.probe if c.drift else None,
            "reason": c.drift.reason if c.drift else "not measured",
            "confounded": c.confounded,
            "fail_on_confounded": c.fail_on_confounded,
        },
        "summary": c.counts(),
        "exit_code": c.exit_code,
        "status_changes": [asdict(s) for s in c.status_changes],
        "results": [dict(zip(_RESULT_FIELDS, get(r), strict=True)) for r in c.results],
        "cells_only_in_base": c.base_only,
        "cells_only_in_new": c.new_only,
    }


def render_json(c: Comparison) -> str:
    """One JSON object; compact (the C encoder: a 10,000-cell comparison renders in well under a second)."""
    doc = to_dict(c)
    try:
        text = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_jsonable(doc), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text + "\n"


def render(c: Comparison, fmt: str = "markdown") -> str:
    """The comparison in the --format asked for."""
    return render_json(c) if fmt == "json" else render_markdown(c)


def render_error(message: str, fmt: str) -> str:
    """Bad input as a document, so a CI step that posts --out always has something to post."""
    if fmt == "json":
        return (
            json.dumps({"format_version": JSON_FORMAT_VERSION, "error": message, "exit_code": EXIT_BAD_INPUT})
            + "\n"
        )
    return f"## loadbench compare: cannot compare\n\n{message}\n"
