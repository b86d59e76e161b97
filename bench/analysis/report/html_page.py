"""report.html: one self-contained page (inline CSS and SVG, no script, no network).

A Content-Security-Policy forbids both, so the page opens offline, can be attached to an issue, and a
record string that escaped escaping could still neither run nor fetch anything.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from bench.analysis.report.plots import Plot
from bench.analysis.report.tables import Column, Table
from bench.analysis.values import escaped

__all__ = ["html_table", "render_html"]

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
    texts = escaped(column.texts, html.escape)
    if column.best is None:
        return [f"{open_tag}{t}</td>" for t in texts]
    return [
        f"{best_tag}{t}</strong></td>" if b else f"{open_tag}{t}</td>"
        for t, b in zip(texts, column.best, strict=True)
    ]


def html_table(table: Table) -> str:
    """A table with its best values marked; every text escaped."""
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
    """The whole page: summary, plots, workload tables, then skipped and failed cells."""
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
