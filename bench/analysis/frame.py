"""The one run reader: a run directory as records (compare) or as the report frame (report, export, recommend).

Every analysis output must describe the same cells with the same values, so the choice of record per cell
(its latest final record, else its latest one), the flattening of nested records, the env.* join and the
frame's column types are made here once. The frame's columns are documented in docs/schema.md under
REPORT_SCHEMA_VERSION.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.analysis.values import is_missing
from bench.errors import ReportError
from bench.run.ownership import own_records
from bench.run.store import RunStore, environments
from bench.schema import FINAL_STATUSES, KNOB_DEFAULTS, KNOBS, SCHEMA_VERSION

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "IDENTITY",
    "REPORT_SCHEMA_VERSION",
    "Run",
    "flat",
    "frame_of",
    "latest_per_cell",
    "rows",
    "to_frame",
]

# Bump when a column of to_frame() changes name, unit or meaning; docs/schema.md documents each version.
REPORT_SCHEMA_VERSION = 1
IDENTITY = ("cell_id", "status", "reason", "label", "schema_version")


@dataclass(frozen=True)
class Run:
    """A run directory read once: run.json and the run's own readable records, in file order.

    Records of another spec or of cells not in run.json's plan are dropped, and a cell's later duplicate
    final records too, each kind counted in one StoreWarning (bench.run.ownership); `missing` holds a row
    (status `missing`) for each planned cell without a final record.
    """

    directory: Path
    meta: dict[str, Any]
    records: list[dict[str, Any]]
    missing: tuple[dict[str, Any], ...] = ()

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> Run:
        """StoreError (one sentence) when the directory is not a usable run."""
        store = RunStore.open(directory)
        owned = own_records(store.meta, store.records())
        owned.warn(str(directory))
        return cls(Path(directory), store.meta, owned.records, tuple(owned.missing))

    @property
    def environments(self) -> list[dict[str, Any]]:
        """Every environment that wrote records; a record's env_index points into this list."""
        return environments(self.meta)

    def latest(self) -> list[dict[str, Any]]:
        """One flat record per cell (see latest_per_cell); a planned cell without a final record is its
        `missing` row, in place of any non-final record it has."""
        rows = latest_per_cell(self.records)
        missing = {row["cell_id"]: row for row in self.missing}
        out = [
            {**{k: row.get(k) for k in KNOBS}, **missing.pop(row["cell_id"])}
            if row["cell_id"] in missing
            else row
            for row in rows
        ]
        return out + [dict(row) for row in missing.values()]


def latest_per_cell(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The latest final record of each cell, or its latest record when none is final; flat, in first-seen order.

    A cell retried by --resume has several records; the final one is what the cell measured.
    """
    chosen: dict[str, Mapping[str, Any]] = {}
    for record in records:
        current = chosen.get(record["cell_id"])
        final = record.get("status") in FINAL_STATUSES
        if current is None or final or current.get("status") not in FINAL_STATUSES:
            chosen[record["cell_id"]] = record
    return [flat(record) for record in chosen.values()]


def flat(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested dicts; a flat dict (the normal case: records are flat by design) is returned as it is.

    Flattening every record through a generic walk costs about a second per 10,000 records.
    """
    if prefix == "" and dict not in set(map(type, record.values())):  # C speed: 20,000 records in 50 ms
        return record if type(record) is dict else dict(record)
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- the report frame -----------------------------------------------------------------------------------


def to_frame(run: str | os.PathLike[str] | Run) -> pd.DataFrame:
    """One row per cell with the columns docs/schema.md documents; StoreError if DIR is not a usable run."""
    return frame_of(run if isinstance(run, Run) else Run.open(run))


def frame_of(run: Run) -> pd.DataFrame:
    """The report frame of a run already read."""
    frame = _raw_frame(run)
    _check_versions(frame, run.directory)
    return _normalise(frame)


def _raw_frame(run: Run) -> pd.DataFrame:
    """Each cell's chosen record with env.* joined, before the frame's columns are given one type."""
    import pandas as pd

    records = run.latest()
    if not records:
        return pd.DataFrame(columns=["cell_id", "status"])
    frame = pd.DataFrame.from_records(records)
    return _join_environment(frame, run.environments or [{}])


def _join_environment(frame: pd.DataFrame, envs: list[dict[str, Any]]) -> pd.DataFrame:
    """env.* columns from the environment each record names by env_index (the first when it names none).

    Joined once per environment, not once per row.
    """
    import pandas as pd

    index = frame.pop("env_index") if "env_index" in frame.columns else pd.Series(0, index=frame.index)
    index = pd.to_numeric(index, errors="coerce").fillna(0).astype(int)
    index = index.where((index >= 0) & (index < len(envs)), 0)
    flat_envs = [{f"env.{k}": v for k, v in flat(env).items()} for env in envs]
    columns = [c for c in dict.fromkeys(k for env in flat_envs for k in env) if c not in frame.columns]
    env_frame = pd.DataFrame({c: [env.get(c) for env in flat_envs] for c in columns})
    joined = env_frame.iloc[index.to_numpy()].reset_index(drop=True)
    joined.index = frame.index
    return pd.concat([frame, joined], axis=1)


def _check_versions(frame: pd.DataFrame, run_dir: Path) -> None:
    """Columns mean different things across record schema versions, so one table cannot mix them."""
    if "schema_version" not in frame.columns:
        return
    # `missing` rows have no version, which makes the column float: 1.0 is version 1.
    versions = sorted({_version_text(v) for v in frame["schema_version"] if not is_missing(v)})
    if len(versions) > 1:
        raise ReportError(
            f"{run_dir} mixes records of schema versions {', '.join(versions)}; "
            "report each loadbench version's results from its own run directory."
        )
    if versions and versions[0] != str(SCHEMA_VERSION):
        raise ReportError(
            f"{run_dir} holds records of schema version {versions[0]} but this loadbench reads version "
            f"{SCHEMA_VERSION}; render it with the loadbench version that wrote it."
        )


def _version_text(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Guarantee the documented columns and give each column one type, so Parquet and CSV can hold it."""
    from pandas.api.types import is_object_dtype

    frame = frame.copy()
    for column in (*IDENTITY, *KNOBS):
        if column not in frame.columns:
            frame[column] = None
    for knob, default in KNOB_DEFAULTS.items():  # records written before the knob was a column
        frame[knob] = frame[knob].where(frame[knob].notna(), default)
    for column in [c for c in frame.columns if is_object_dtype(frame[c])]:
        if column.endswith(".samples"):
            frame[column] = frame[column].map(lambda v: v if type(v) is list else None)
        else:
            frame[column] = _one_type(frame[column])
    frame.insert(0, "report_schema_version", REPORT_SCHEMA_VERSION)
    return frame[_column_order(list(frame.columns))]


def _one_type(column: pd.Series) -> pd.Series:
    """Lists and dicts (env.*) become JSON text; a column whose records disagree on type becomes text."""
    types = {type(v) for v in column.tolist()} - {type(None), float}
    if types & {list, dict}:
        return column.map(
            lambda v: json.dumps(v, sort_keys=True, default=str) if type(v) in (list, dict) else None
        )
    if len(types) > 1 or (types and any(type(v) is float and not math.isnan(v) for v in column.tolist())):
        return column.map(lambda v: None if is_missing(v) else str(v))
    return column


def _column_order(columns: list[str]) -> list[str]:
    """report_schema_version, identity, knobs, then record columns in record order, env.* last."""
    first = ["report_schema_version", *IDENTITY, *KNOBS]
    rest = [c for c in columns if c not in first]
    return first + [c for c in rest if not c.startswith("env.")] + [c for c in rest if c.startswith("env.")]


def rows(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Any]]:
    """The frame's rows as dicts of the named columns that exist, a missing value as None (never NaN).

    Exports and recommendations read cells one by one; a wide frame is slow to convert whole.
    """
    present = [c for c in dict.fromkeys(columns) if c in frame.columns]
    part = frame[present]
    return part.astype(object).where(part.notna(), None).to_dict("records")
