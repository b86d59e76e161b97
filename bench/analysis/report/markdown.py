"""report.md: the tables as GitHub-flavoured Markdown, every record string escaped.

Model names and error messages are user input: escaped text cannot break a table, start code, bold, a link
or raw HTML.
"""

from __future__ import annotations

import re

from bench.analysis.report.tables import Column, Table
from bench.analysis.values import escaped

__all__ = ["markdown_table", "md_escape", "render_markdown"]

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


def _md_column(column: Column) -> list[str]:
    texts = escaped(column.texts, md_escape)
    if column.best is None:
        return texts
    return [f"**{t}**" if best else t for t, best in zip(texts, column.best, strict=True)]


def markdown_table(table: Table) -> list[str]:
    """A GitHub table: numbers right-aligned, best values bold, every text escaped."""
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
    """report.md: summary, workload tables, then skipped and failed cells."""
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
