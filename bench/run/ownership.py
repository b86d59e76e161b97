"""Which records of a run directory belong to the run, and which planned cells have no final record.

Readers (the analysis frame, merge) and the run's own summary must agree on this, or a report could count
cells of another spec, or a cell its plan never had, as part of the run. A record belongs to a run when its
`spec_hash` (if it has one) is run.json's and its cell is in run.json's plan (the shard's share of it for a
shard run). A run.json whose plan lists no cells (a hand-made or tool-made run) does not restrict cells.
A planned cell without a final record is `missing` (bench.schema.MISSING_STATUS).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.errors import StoreError
from bench.run.records import StoreWarning, is_final
from bench.run.shards import select_shard
from bench.schema import MISSING_STATUS

__all__ = ["Ownership", "missing_reason", "own_records", "planned_cells"]


def planned_cells(meta: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """run.json's planned cells (this shard's share), in plan order; None when the plan lists none."""
    plan = meta.get("plan")
    if not isinstance(plan, list) or not all(isinstance(c, dict) and "cell_id" in c for c in plan):
        raise StoreError(
            "run.json's plan is not a list of cells with a cell_id; the run directory is damaged."
        )
    if not plan:
        return None
    shard = meta.get("shard")
    return list(select_shard(plan, shard)) if shard else list(plan)


@dataclass
class Ownership:
    """A run's records sorted out: the ones kept, and what was dropped or is missing."""

    records: list[dict[str, Any]]
    other_spec: int = 0
    unplanned: int = 0
    duplicate_finals: dict[str, int] = field(default_factory=dict)  # cell_id -> final records it has
    missing: list[dict[str, Any]] = field(default_factory=list)  # plan rows of cells without a final record

    def warn(self, where: str) -> None:
        """One StoreWarning per kind of problem, naming the directory and the count."""
        if self.other_spec:
            warnings.warn(
                f"{where}: ignored {self.other_spec} record(s) of another spec (their spec_hash is not run.json's).",
                StoreWarning,
                stacklevel=3,
            )
        if self.unplanned:
            warnings.warn(
                f"{where}: ignored {self.unplanned} record(s) of cells that are not in run.json's plan.",
                StoreWarning,
                stacklevel=3,
            )
        if self.duplicate_finals:
            first = next(iter(self.duplicate_finals))
            warnings.warn(
                f"{where}: {len(self.duplicate_finals)} cell(s) have more than one final record (e.g. {first}: "
                f"{self.duplicate_finals[first]}); the first final record of each is used, as resume does.",
                StoreWarning,
                stacklevel=3,
            )


def missing_reason(attempts: list[Mapping[str, Any]]) -> str:
    """Why a planned cell has no final record, from the non-final records it has (if any)."""
    if attempts:
        last = attempts[-1]
        return f"no final record; its last attempt ended {last.get('status')}: {last.get('reason') or 'no reason'}"
    return "no final record: the cell never finished (a runner died or was stopped); --resume runs it"


def own_records(meta: Mapping[str, Any], records: Iterable[Mapping[str, Any]]) -> Ownership:
    """Keep the run's own records (file order); a later duplicate final record of a cell is dropped."""
    planned = planned_cells(meta)
    wanted = None if planned is None else {c["cell_id"] for c in planned}
    spec_hash = meta.get("spec_hash")
    result = Ownership([])
    finals: Counter[str] = Counter()
    attempts: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        if record.get("spec_hash") is not None and record.get("spec_hash") != spec_hash:
            result.other_spec += 1
            continue
        if wanted is not None and record["cell_id"] not in wanted:
            result.unplanned += 1
            continue
        if is_final(record):
            finals[record["cell_id"]] += 1
            if finals[record["cell_id"]] > 1:
                continue
        else:
            attempts.setdefault(record["cell_id"], []).append(record)
        result.records.append(dict(record))
    result.duplicate_finals = {cell: n for cell, n in finals.items() if n > 1}
    for cell in planned or []:
        if cell["cell_id"] not in finals:
            row = {"cell_id": cell["cell_id"], "status": MISSING_STATUS, "label": cell.get("label")}
            row["reason"] = missing_reason(attempts.get(cell["cell_id"], []))
            result.missing.append(row)
    return result
