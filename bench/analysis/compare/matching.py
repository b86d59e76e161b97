"""Which two runs compare can judge, and which cell of NEW stands for which cell of BASE.

Cells are matched by cell_id. When the checkpoint changed (another fingerprint, so no cell_id is shared)
they are matched by the knobs that identify a cell apart from its checkpoint (schema.MATCH_KNOBS), and the
output says so first. Two different models or runs of different schema versions are bad input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.analysis.compare.runs import RunData, model_key
from bench.errors import CompareError
from bench.schema import KNOB_DEFAULTS, MATCH_KNOBS, SCHEMA_VERSION

__all__ = ["Pair", "check_comparable", "match"]

Pair = tuple[dict[str, Any], dict[str, Any]]


def check_comparable(base: RunData, new: RunData) -> list[str]:
    """Exit-2 conditions as CompareError; returns notes for the top of the output."""
    notes: list[str] = []
    for run, name in ((base, "BASE"), (new, "NEW")):
        if len(run.schema_versions) > 1:
            versions = ", ".join(sorted(map(str, run.schema_versions)))
            raise CompareError(
                f"{name} {run.directory} mixes schema versions ({versions}) in run.json and its records; "
                "re-run it with one loadbench version before comparing."
            )
    (base_version,), (new_version,) = base.schema_versions, new.schema_versions
    if base_version != new_version:
        raise CompareError(
            f"BASE was written with schema_version {base_version} and NEW with {new_version}; "
            "compare runs of the same schema version (re-run the baseline with this loadbench)."
        )
    if base_version != SCHEMA_VERSION:
        raise CompareError(
            f"both runs use schema_version {base_version} but this loadbench reads {SCHEMA_VERSION}; "
            "use the loadbench version that wrote them."
        )
    base_key, new_key = model_key(base.model), model_key(new.model)
    if base_key != new_key:
        same_params = base.params is not None and base.params == new.params
        if not same_params:
            raise CompareError(
                f"BASE ran model {base.model!r} and NEW ran model {new.model!r}; compare needs two runs of "
                "the same model, so compare each against a baseline of its own model."
            )
        notes.append(
            f"The model names differ ({base.model!r} vs {new.model!r}) but both have {base.params:,} "
            "parameters, so they are treated as one architecture."
        )
    elif base.params is not None and new.params is not None and base.params != new.params:
        notes.append(f"The parameter count changed from {base.params:,} to {new.params:,}.")
    return notes


def _knob_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(record.get(knob, KNOB_DEFAULTS.get(knob)) for knob in MATCH_KNOBS)


def match(base: RunData, new: RunData) -> tuple[list[Pair], str, list[str], list[str], list[str]]:
    """(pairs, "cell_id" or "knobs", notes, cell_ids only in BASE, cell_ids only in NEW)."""
    notes: list[str] = []
    shared = base.records.keys() & new.records.keys()
    fp_base, fp_new = base.fingerprint, new.fingerprint
    if shared and fp_base == fp_new:
        pairs = [(base.records[c], new.records[c]) for c in base.records if c in shared]
        base_only = [c for c in base.records if c not in shared]
        new_only = [c for c in new.records if c not in shared]
        return pairs, "cell_id", notes, base_only, new_only

    if fp_base != fp_new:
        why = f"the checkpoint changed (fingerprint {fp_base} in BASE, {fp_new} in NEW), so no cell_id is shared"
    else:
        why = "the two runs share no cell_id (the measurement version or the load options changed)"
    notes.append(f"Cells were matched by knobs ({', '.join(MATCH_KNOBS)}), not by cell_id: {why}.")
    base_by_knobs: dict[tuple[Any, ...], dict[str, Any]] = {}
    duplicates = 0
    for record in base.records.values():
        key = _knob_key(record)
        duplicates += key in base_by_knobs
        base_by_knobs[key] = record
    pairs = []
    used: set[str] = set()
    new_only = []
    for record in new.records.values():
        partner = base_by_knobs.get(_knob_key(record))
        if partner is None or partner["cell_id"] in used:
            new_only.append(record["cell_id"])
            continue
        used.add(partner["cell_id"])
        pairs.append((partner, record))
    base_only = [c for c in base.records if c not in used]
    if duplicates:
        notes.append(f"{duplicates} BASE cell(s) share knobs with another; the later one was used.")
    return pairs, "knobs", notes, base_only, new_only
