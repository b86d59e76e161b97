"""`loadbench ab`'s judgement and output: paired statistics (paired), verdicts and the stopping rule
(judging), ab.md and JSON (rendering). The run stage is bench.run.ab; the command line bench.commands.ab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.analysis.ab.judging import DEFAULT_ALPHA, DEFAULT_MIN_EFFECT, ABJudgement, judge, settled
from bench.analysis.ab.rendering import render_json, render_markdown, summary_line
from bench.fileio import atomic_write_text
from bench.run.records import ab_key, is_final, record_key
from bench.run.store import RunStore
from bench.schema import AB_KEY, AB_SIDES

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_EFFECT",
    "ABJudgement",
    "is_ab_run",
    "judge",
    "judge_run",
    "missing_measurements",
    "render_ab",
    "render_json",
    "settled",
    "summary_line",
]


def is_ab_run(meta: dict[str, Any]) -> bool:
    return AB_KEY in meta


def judge_run(
    store: RunStore, rounds: int | None = None, records: list[dict[str, Any]] | None = None
) -> ABJudgement:
    """An ab run directory judged with the settings it was run with (on its first `rounds` rounds only,
    when given: what a lower --rounds would have concluded); `records`: the store's, already read."""
    ab = store.meta.get(AB_KEY, {})
    records = store.records() if records is None else records
    if rounds is not None:
        records = [r for r in records if r.get("ab.round") is None or r["ab.round"] <= rounds]
    return judge(
        records,
        min_effect=float(ab.get("min_effect", DEFAULT_MIN_EFFECT)),
        alpha=float(ab.get("alpha", DEFAULT_ALPHA)),
    )


def missing_measurements(records: list[dict[str, Any]]) -> int:
    """Measurements begun without a final record (interrupted, or a side that died): --resume runs them."""
    final = {record_key(r) for r in records if is_final(r)}
    begun = {ab_key(r["cell_id"], r["side"], r["ab.round"]) for r in records if r.get("side") in AB_SIDES}
    return len(begun - final)


def render_ab(directory: str | Path, out: str | Path | None = None) -> tuple[dict[str, Path], ABJudgement]:
    """Write ab.md and ab.json of an ab run directory; their paths and the judgement."""
    store = RunStore.open(directory)
    records = store.records()  # read once: the judgement and the count of missing measurements
    judgement = judge_run(store, records=records)
    missing = missing_measurements(records)
    target = Path(out) if out is not None else store.directory
    target.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": target / "ab.md", "json": target / "ab.json"}
    atomic_write_text(paths["markdown"], render_markdown(judgement, store.meta, missing=missing))
    atomic_write_text(paths["json"], render_json(judgement, store.meta, missing=missing))
    return paths, judgement
