"""bench/schema.py is the record's vocabulary, and docs/schema.md its contract: the two must agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import schema
from bench.schema import (
    ALL_STATUSES,
    FAILED_STATUSES,
    FINAL_STATUSES,
    FIT_COLUMNS,
    KNOBS,
    MATCH_KNOBS,
    METRICS,
    MISSING_STATUS,
    NON_FINAL_STATUSES,
    PEAK_SOURCES,
    PHASES,
    QUALITY_BEST,
    STATUSES,
    WORKLOADS,
    cell_label,
    is_memory,
    sampled_metrics,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "schema.md"


def _rows() -> dict[str, str]:
    """First-column column name (without backticks) -> the whole table row, for every table on the page."""
    rows: dict[str, str] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|", line)
        if match:
            rows[match.group(1)] = line
    return rows


def _documented_as(name: str) -> set[str]:
    """The names a column may be documented under: itself, or with its phase/workload as a placeholder."""
    parts = name.split(".")
    forms = {name}
    for i, part in enumerate(parts):
        for values, placeholder in ((PHASES, "<phase>"), (WORKLOADS, "<workload>")):
            if part in values:
                forms.add(".".join([*parts[:i], placeholder, *parts[i + 1 :]]))
    return forms


def test_placeholder_forms() -> None:
    assert _documented_as("mem.load.rss_bytes") == {"mem.load.rss_bytes", "mem.<phase>.rss_bytes"}
    assert "energy.<workload>.joules" in _documented_as("energy.decode.joules")
    assert _documented_as("mem.footprint_bytes") == {"mem.footprint_bytes"}


def test_every_metric_is_documented() -> None:
    rows = _rows()
    missing = sorted(name for name in METRICS if not _documented_as(name) & rows.keys())
    assert not missing, f"metrics of bench.schema.METRICS with no row in docs/schema.md: {missing}"


def test_every_status_is_in_the_status_row() -> None:
    meaning = _rows()["status"].strip().strip("|").split("|")[-1]
    listed = set(re.findall(r"`([a-z_]+)`", meaning))
    known = set(ALL_STATUSES) | {MISSING_STATUS}
    assert known <= listed, f"statuses missing from the status row: {known - listed}"
    assert listed <= known, f"the status row names statuses schema lacks: {listed - known}"


def test_the_status_row_explains_missing() -> None:
    """`missing` is the readers' status, never written: the contract must say what it means and what to do."""
    meaning = _rows()["status"]
    sentence = meaning[meaning.index(f"`{MISSING_STATUS}`") :]
    assert "MISSING_STATUS" in sentence and "no final record" in sentence
    assert "never written" in sentence and "--resume" in sentence


def test_the_spec_hash_column_is_documented() -> None:
    assert schema.SPEC_HASH in _rows(), "bench.schema.SPEC_HASH has no row in docs/schema.md"


def test_every_fit_column_is_documented() -> None:
    rows = _rows()
    assert not [c for c in FIT_COLUMNS if c not in rows], "fit.* columns with no row in docs/schema.md"


def test_every_knob_column_is_documented() -> None:
    rows = _rows()
    assert not [k for k in KNOBS if k not in rows], "knob columns with no row in docs/schema.md"


# --- the vocabulary itself ------------------------------------------------------------------------------------


def test_statuses_partition() -> None:
    assert FINAL_STATUSES.isdisjoint(NON_FINAL_STATUSES)
    assert (
        FAILED_STATUSES < FINAL_STATUSES and "ok" not in FAILED_STATUSES and "skipped" not in FAILED_STATUSES
    )
    assert set(STATUSES) == ALL_STATUSES and len(STATUSES) == len(ALL_STATUSES)
    assert MISSING_STATUS not in ALL_STATUSES  # readers' name, never written


def test_match_knobs_are_knobs_without_the_model() -> None:
    assert set(MATCH_KNOBS) <= set(KNOBS) and "model" not in MATCH_KNOBS
    assert set(WORKLOADS) <= set(PHASES) and "load" in PHASES


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("mem.footprint_bytes", True),
        ("mem.load.rss_bytes", True),
        ("mem.train.torch_reserved_bytes", True),
        ("mem.decode.nvml_process_bytes", True),
        ("mem.prefill.estimate_bytes", False),  # a prediction, not a measurement
        ("mem.train.estimate_tensor_bytes", False),
        ("mem.nvml_baseline_bytes", False),  # before the cell: not the cell's memory
        ("load.read_floor_bytes", False),  # bytes read, not held
        ("prefill.tokens_per_s", False),
        ("mem.load.rss_bytes.p10", False),
    ],
)
def test_is_memory(column: str, expected: bool) -> None:
    assert is_memory(column) is expected


def test_is_memory_agrees_with_the_registry() -> None:
    for name in METRICS:
        assert is_memory(name) is name.startswith("mem."), name
    for phase in PHASES:
        assert not is_memory(f"mem.{phase}.estimate_bytes")


def test_registry_entries() -> None:
    sampled = sampled_metrics()
    assert set(sampled) == {
        f"{w}.{m}"
        for w, ms in {
            "load": ("model_s",),  # repeated loads in the cell (issue 13); the first load is apart
            "prefill": ("latency_s", "tokens_per_s"),
            "train": ("step_s", "tokens_per_s"),
            "decode": ("ttft_s", "tpot_s", "tokens_per_s"),
        }.items()
        for m in ms
    }
    for name in sampled:
        m = METRICS[name]
        assert m.kind in ("time", "throughput") and m.better == ("lower" if m.unit == "s" else "higher")
    assert not METRICS["load.model_first_s"].sampled
    assert schema.CI_LEVEL == 0.95 and {"ci_low", "ci_high", "blocks", "stop"} <= set(schema.SAMPLE_SUFFIXES)
    assert schema.metric("cell_id") is None and schema.metric("load.model_s") is METRICS["load.model_s"]
    assert all(METRICS[name].kind == "quality" for name in QUALITY_BEST)
    assert {src for rule in PEAK_SOURCES.values() for src, _ in rule} <= set(schema.MEMORY_SOURCES)


def test_cell_label_is_the_records_label() -> None:
    assert cell_label("float32", "none", "sdpa", False, "auto") == "float32/none/sdpa/no-ckpt/cache-auto"
    assert cell_label("bfloat16", "nf4", "eager", True, "off") == "bfloat16/nf4/eager/ckpt/cache-off"
