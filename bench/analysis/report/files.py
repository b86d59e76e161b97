"""`loadbench report`'s files: records.parquet, records.csv, report.md and report.html, written atomically.

Each file is written beside its target and renamed (bench.fileio), so a reader never sees half a report,
even after a crash or a full disk. loadbench never overwrites a file it did not write: the names it wrote
into a directory are listed in that directory's manifest, `.loadbench-files` (a JSON list), and a target
that exists but is not listed (a user's own report.md or records.csv) stops the rendering with one sentence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bench.analysis.frame import Run, frame_of
from bench.analysis.report.html_page import render_html
from bench.analysis.report.markdown import render_markdown
from bench.analysis.report.plots import all_plots
from bench.analysis.report.tables import View, all_tables, summary_facts, title
from bench.analysis.report.timing import time_section
from bench.errors import ReportError
from bench.fileio import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["MANIFEST", "OUTPUTS", "arrow_table", "claim_outputs", "render", "write_csv", "write_parquet"]

OUTPUTS = {"parquet": "records.parquet", "csv": "records.csv", "markdown": "report.md", "html": "report.html"}
MANIFEST = ".loadbench-files"


def _manifest(directory: Path) -> list[str]:
    """The names loadbench wrote into `directory`; an unreadable manifest lists none (so nothing is ours).

    A run directory from before manifests existed (run.json, no manifest) holds the outputs its run rendered.
    """
    path = directory / MANIFEST
    if not path.exists() and (directory / "run.json").is_file():
        return list(OUTPUTS.values())
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def claim_outputs(directory: Path, names: list[str]) -> None:
    """Refuse (ReportError) if a target exists that loadbench did not write, else list the names as ours
    before writing them, so a crash part-way leaves no file of ours unlisted."""
    listed = _manifest(directory)
    foreign = [n for n in names if (directory / n).exists() and n not in listed]
    if foreign:
        raise ReportError(
            f"{directory} already holds {', '.join(foreign)}, which loadbench did not write; move "
            "them or render with --out into another directory."
        )
    merged = list(dict.fromkeys([*listed, *names]))
    if merged != listed:
        atomic_write_text(directory / MANIFEST, json.dumps(merged) + "\n")


def render(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Write records.parquet, records.csv, report.md and report.html (default: into the run directory)."""
    from concurrent.futures import ThreadPoolExecutor

    run_path = Path(run_dir)
    run = Run.open(run_path)
    frame = frame_of(run)
    out = Path(out_dir) if out_dir is not None else run_path
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in OUTPUTS.items()}
    claim_outputs(out, list(OUTPUTS.values()))
    table = arrow_table(frame)
    # Arrow writes without the GIL, so the data files are written while the tables and plots are drawn.
    with ThreadPoolExecutor(max_workers=1) as pool:
        written = pool.submit(_write_data_files, table, paths["parquet"], paths["csv"])
        view = View.of(frame)
        heading, facts = title(run.meta), summary_facts(view, run.meta, run_path.resolve())
        workloads, statuses = all_tables(view)
        markdown = render_markdown(heading, facts, workloads, statuses) + time_section(run.meta)
        atomic_write_text(paths["markdown"], markdown)
        atomic_write_text(paths["html"], render_html(heading, facts, workloads, statuses, all_plots(view)))
        written.result()
    return paths


def _write_data_files(table: pa.Table, parquet: Path, csv: Path) -> None:
    write_parquet(table, parquet)
    write_csv(table, csv)


def arrow_table(frame: pd.DataFrame) -> pa.Table:
    """The frame as Arrow, converted once for both files."""
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Samples stay lists (Parquet list<double>), so a reader can recompute any statistic."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    atomic_write_bytes(path, buffer.getvalue().to_pybytes())


def write_csv(table: pa.Table, path: Path) -> None:
    """CSV has no lists: samples become JSON arrays in their cells (Arrow's writer: fast on 10k rows)."""
    import pyarrow as pa
    import pyarrow.csv

    for index, column in enumerate(table.schema):
        if pa.types.is_list(column.type):
            table = table.set_column(index, column.name, _json_lists(table.column(index)))
    buffer = pa.BufferOutputStream()
    pyarrow.csv.write_csv(table, buffer)
    atomic_write_bytes(path, buffer.getvalue().to_pybytes())


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
