"""One line of records.jsonl: what a record must hold, how it is written, and how a torn line is read.

The store appends records and merge rewrites them; both must write the same strict one-line JSON and both
must read past the torn line a killed writer can leave, so the line format lives here once.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.errors import StoreError
from bench.schema import ALL_STATUSES, FINAL_STATUSES

__all__ = [
    "StoreWarning",
    "ab_key",
    "check_cell_id",
    "check_record",
    "dumps_line",
    "finite",
    "is_final",
    "parse_line",
    "record_key",
    "warn_skipped",
]

# cell_id also names a claim file, so it must be a plain file name.
_CELL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class StoreWarning(UserWarning):
    """Something in a run directory was skipped (a torn line) but reading went on."""


def finite(value: Any) -> Any:
    """NaN and infinity are not JSON; a metric that is not a number is null, as every missing metric is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def dumps_line(value: Any, what: str) -> str:
    """One line of strict JSON (no NaN, no raw newlines), or a StoreError naming what failed."""
    try:
        return json.dumps(finite(value), sort_keys=False, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"{what} cannot be stored as JSON ({exc}); convert values to str, int, float or bool."
        ) from exc


def check_cell_id(cell_id: object) -> str:
    """A cell_id names a claim file and a shard, so it must be a plain, non-empty file name."""
    if not isinstance(cell_id, str) or not _CELL_ID.fullmatch(cell_id):
        raise StoreError(
            f"cell_id must be a non-empty string of letters, digits, '_', '.' or '-', got {cell_id!r}."
        )
    return cell_id


def check_record(record: Mapping[str, Any]) -> None:
    """A record without cell_id or a known status could never be resumed, merged or reported."""
    if "cell_id" not in record or "status" not in record:
        raise StoreError(f"a record needs 'cell_id' and 'status'; got keys {sorted(record)}.")
    check_cell_id(record["cell_id"])
    if record["status"] not in ALL_STATUSES:
        raise StoreError(f"status {record['status']!r} is not one of {sorted(ALL_STATUSES)}.")


def _is_record(value: Any) -> bool:
    """A parsed line counts as a record only if it has the two keys everything downstream relies on."""
    return isinstance(value, dict) and isinstance(value.get("cell_id"), str) and "status" in value


def parse_line(line: bytes) -> dict[str, Any] | None:
    """One complete line as a record, or None when it is torn or not a record."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if _is_record(value) else None


def record_key(record: Mapping[str, Any]) -> str:
    """What one final record ends: its cell in a run; its cell's side in one round of an `ab` run."""
    side, round_no = record.get("side"), record.get("ab.round")
    if side is None or round_no is None:
        return str(record["cell_id"])
    return ab_key(str(record["cell_id"]), str(side), int(round_no))


def ab_key(cell_id: str, side: str, round_no: int) -> str:
    """The key (and claim file name) of one cell on one side in one round of an `ab` run."""
    return f"{cell_id}.{side}.{round_no}"


def is_final(record: Mapping[str, Any]) -> bool:
    """A final record ends its cell: resume skips the cell and a second final record is refused."""
    return record.get("status") in FINAL_STATUSES


def warn_skipped(path: Path, *, torn_middle: int, torn_tail: bool) -> None:
    """Tell the caller of RunStore.records (two frames up) which lines of `path` were skipped."""
    if torn_tail:
        warnings.warn(
            f"{path}: ignored a torn last line (a partial write: a killed process or a full disk).",
            StoreWarning,
            stacklevel=3,
        )
    if torn_middle:
        warnings.warn(f"{path}: skipped {torn_middle} unreadable line(s).", StoreWarning, stacklevel=3)
