"""`ab`'s output: ab.md (a pull-request comment: the verdict first, then each regression and improvement with
its ratio and interval, then what differs between the sides) and one JSON document for machines."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from bench.analysis.ab.judging import (
    MEM_REL,
    MIN_ROUNDS,
    POOLED_ID,
    ABJudgement,
    MetricVerdict,
    StatusVerdict,
)
from bench.analysis.compare.rendering import MARKDOWN_LIMIT, fmt_value, md_cell
from bench.schema import AB_KEY, AB_SIDES

__all__ = ["JSON_FORMAT_VERSION", "render_json", "render_markdown", "side_differences", "summary_line"]

JSON_FORMAT_VERSION = 1


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def side_differences(meta: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, base, new) for the interpreter, the environment variables and every library version or
    host fact the two sides disagree on, as each side reported them."""
    sides = meta.get(AB_KEY, {}).get("sides", {})
    base, new = sides.get(AB_SIDES[0], {}), sides.get(AB_SIDES[1], {})
    out: list[tuple[str, Any, Any]] = []
    if base.get("python") != new.get("python"):
        out.append(("python", base.get("python"), new.get("python")))
    b_env, n_env = base.get("env") or {}, new.get("env") or {}
    for key in sorted({*b_env, *n_env}):
        if b_env.get(key) != n_env.get(key):
            out.append((f"env {key}", b_env.get(key, "(inherited)"), n_env.get(key, "(inherited)")))
    b_facts, n_facts = _flatten(base.get("environment") or {}), _flatten(new.get("environment") or {})
    for key in sorted({*b_facts, *n_facts}):
        if b_facts.get(key) != n_facts.get(key):
            out.append((key, b_facts.get(key), n_facts.get(key)))
    return out


def summary_line(j: ABJudgement, missing: int = 0) -> str:
    """The verdict in one line, as CI logs show it."""
    regressions = len(j.regressions) + len(j.status_regressions)
    icon = "❌" if regressions else "✅"
    unchanged = sum(r.verdict == "no change" for r in j.results)
    not_judged = sum(r.verdict == "not judged" for r in j.results)
    rounds = sorted(j.rounds.values())
    span = (
        f"{rounds[0]}–{rounds[-1]}" if rounds and rounds[0] != rounds[-1] else str(rounds[0] if rounds else 0)
    )
    line = (
        f"{icon} {regressions} regression(s), {len(j.improvements)} improvement(s), {unchanged} unchanged, "
        f"{not_judged} not judged · {j.cells} cell(s), {span} paired round(s) each"
    )
    if missing:
        line += f" · {missing} measurement(s) missing (--resume runs them)"
    return line


def _ratio(r: MetricVerdict) -> str:
    if r.ratio is None:
        return "–"
    text = f"×{r.ratio:.3f}"
    if r.low is not None and r.high is not None:
        text += f" [{r.low:.3f}, {r.high:.3f}]"
    return text


def _evidence(r: MetricVerdict) -> str:
    if r.kind == "memory":
        return f"median of {r.n} per-round changes; needs > {MEM_REL:.0%} and ≥ 1 MiB"
    if r.p is None:
        return md_cell(r.reason or "")
    pairs = f"{r.n} cell-rounds" if r.cell_id == POOLED_ID else f"{r.n} rounds"
    return f"p={r.p:.2g}, q={r.q:.2g}, {pairs}"


def _table(rows: list[MetricVerdict], limit: int) -> list[str]:
    lines = ["| cell | metric | base | new | new/base [95 %] | evidence |", "|---|---|---:|---:|---:|---|"]
    for r in rows[:limit]:
        lines.append(
            f"| {md_cell(r.cell)} | `{r.metric}` | {fmt_value(r.metric, r.base)} | {fmt_value(r.metric, r.new)} "
            f"| {_ratio(r)} | {_evidence(r)} |"
        )
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more (see `--format json`).")
    return lines


def _status_table(rows: list[StatusVerdict]) -> list[str]:
    lines = ["| cell | round | base | new | reason |", "|---|---:|---|---|---|"]
    lines += [
        f"| {md_cell(s.cell)} | {s.round} | {s.base_status} | {s.new_status} | {md_cell(s.reason or '')} |"
        for s in rows
    ]
    return lines


def render_markdown(
    j: ABJudgement,
    meta: Mapping[str, Any],
    *,
    missing: int = 0,
    limit: int = 200,
    max_chars: int = MARKDOWN_LIMIT,
) -> str:
    """ab.md: the verdict, regressions, improvements, what differs between the sides, then the rest folded."""
    ab = meta.get(AB_KEY, {})
    out = [f"## loadbench ab: {summary_line(j, missing)}", ""]
    out.append(
        f"model `{md_cell(meta.get('checkpoint', {}).get('path', '?'))}` · seed {ab.get('seed')} · "
        f"up to {ab.get('rounds')} rounds · min effect {j.min_effect:.0%} · α {j.alpha:g}"
    )
    out.append("")
    for title, metrics, statuses in (
        ("Regressions", j.regressions, j.status_regressions),
        ("Improvements", j.improvements, [s for s in j.statuses if s.verdict == "improvement"]),
    ):
        if metrics or statuses:
            out += [f"### {title} ({len(metrics) + len(statuses)})", ""]
            if statuses:
                out += [*_status_table(statuses), ""]
            if metrics:
                out += [*_table(metrics, limit), ""]
    differences = side_differences(meta)
    out += ["### What differs between the sides", ""]
    if differences:
        out += ["| | base | new |", "|---|---|---|"]
        out += [f"| {md_cell(k)} | {md_cell(b)} | {md_cell(n)} |" for k, b, n in differences]
    else:
        out.append(
            "Nothing: the same interpreter, environment and library versions on both sides (an A/A run)."
        )
    out.append("")
    changed = [s for s in j.statuses if s.verdict == "changed"]
    if changed:
        out += [f"<details><summary>Status changed, not judged ({len(changed)})</summary>", ""]
        out += [*_status_table(changed), "", "</details>", ""]
    for verdict, title in (("no change", "Unchanged"), ("not judged", "Not judged")):
        rows = [r for r in j.results if r.verdict == verdict]
        if rows:
            out += [f"<details><summary>{title} ({len(rows)})</summary>", ""]
            out += [*_table(rows, limit), "", "</details>", ""]
    out.append(
        f"<sub>Each round measures a cell on both sides back to back (which goes first alternates), so a slow "
        f"stretch of the machine falls on both. A timed metric is a regression or improvement only if the "
        f"signed-rank test over its per-round ratios is significant (Benjamini-Hochberg over {j.tests} tested "
        f"metrics, q < {j.alpha:g}) and the Hodges-Lehmann ratio is beyond {j.min_effect:.0%}; each timed metric "
        f'is also tested over every cell\'s rounds at once ("pooled"); metrics with '
        f"fewer than {MIN_ROUNDS} paired rounds are not judged. Memory peaks: the median per-round change, "
        f"beyond {MEM_REL:.0%} and 1 MiB.</sub>"
    )
    text = "\n".join(out) + "\n"
    if len(text) > max_chars:
        text = text[: max_chars - 80] + "\n\n… cut to fit a pull-request comment (see `--format json`).\n"
    return text


def render_json(j: ABJudgement, meta: Mapping[str, Any], *, missing: int = 0) -> str:
    """Every verdict, the settings and the sides' differences, as one JSON document (NaN as null)."""
    doc = {
        "format_version": JSON_FORMAT_VERSION,
        "summary": summary_line(j, missing),
        "regressed": j.regressed,
        "missing": missing,
        "min_effect": j.min_effect,
        "alpha": j.alpha,
        "rounds": j.rounds,
        "ab": {k: v for k, v in meta.get(AB_KEY, {}).items() if k != "sides"},
        "differences": [{"field": k, "base": b, "new": n} for k, b, n in side_differences(meta)],
        "results": [asdict(r) for r in j.results],
        "statuses": [asdict(s) for s in j.statuses],
    }
    return json.dumps(doc, indent=1, default=str, allow_nan=False) + "\n"
