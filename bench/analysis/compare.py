"""`loadbench compare BASE NEW`: regression verdicts between two run directories.

Each timed metric of each matched cell is judged from its samples, not from its median alone:

* a Mann-Whitney U test of NEW's samples against BASE's (exact distribution when there are no ties and
  one sample has at most 20 values, normal approximation with tie and continuity correction otherwise);
* a Benjamini-Hochberg adjustment over every metric judged in the comparison, because one CI job tests
  hundreds of metrics at once and "exit 1 on any regression" must not fire on the one in a hundred that
  is unlucky by chance (when nothing changed, BH keeps the chance of any flag at most `alpha`);
* a minimum effect: the median must move by at least `min_effect` (5 %) in the worse or better direction.

A metric is a regression or an improvement only when the test and the effect both say so. Metrics the
runner flagged noisy (IQR/median > 10 %) in either run, and metrics with fewer than 5 samples in either
run, are listed as "not judged" with that reason. Memory metrics are single values: they are compared by
the minimum effect alone (and at least 1 MiB), and labelled so. A cell that was ok in BASE and fails in
NEW (oom, timeout, crashed, error, invalid) is a regression too.

Cells are matched by `cell_id`. When the checkpoint changed (another fingerprint, so no cell_id is shared)
they are matched by their knobs and the output says so first. Two different models, a directory that is
not a run, or runs of different schema versions are bad input (exit 2).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure.probes import NOISY_REL_IQR
from bench.run.store import FINAL_STATUSES, SCHEMA_VERSION, RunStore, StoreError, environments

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_OK",
    "EXIT_REGRESSION",
    "CompareError",
    "Comparison",
    "MetricResult",
    "RunData",
    "bh_adjust",
    "compare",
    "compare_runs",
    "main",
    "mann_whitney_u",
    "register",
    "render",
    "render_json",
    "render_markdown",
]

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2
JSON_FORMAT_VERSION = 1

MIN_N = 5  # fewer samples than this in either run: not judged
EXACT_MAX_SMALL, EXACT_MAX_LARGE = 20, 50  # exact U distribution when min(n) <= 20 and max(n) <= 50
MEM_ABS_FLOOR_BYTES = 1 << 20  # a memory change smaller than 1 MiB is never a verdict
# Knobs that identify a cell apart from its checkpoint: used when cell_ids cannot match.
KNOBS = ("dtype", "quant", "attn", "grad_ckpt", "use_cache", "batch", "seq", "new_tokens", "threads")
# Timings recorded once per cell (no samples): shown, never judged (n=1 < MIN_N).
SINGLE_SHOT_TIMINGS = ("load.model_s",)
FAILED_STATUSES = frozenset({"oom", "timeout", "crashed", "error", "invalid"})
# GitHub refuses comment bodies over 65536 characters.
MARKDOWN_LIMIT = 60_000


class CompareError(StoreError):
    """Two directories that cannot be compared; the message is one sentence a user can act on."""


# --- statistics -----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _u_cdf_table() -> dict[tuple[int, int], np.ndarray]:
    """Exact null CDF of U for every (m, n) with m <= 20, n <= 50, from the probability recursion.

    U(m, n) counts pairs (x_i > y_j). The largest of the m + n values is an x with probability m/(m+n),
    adding n to U, else a y: p(m, n, u) = m/(m+n) p(m-1, n, u-n) + n/(m+n) p(m, n-1, u).
    Probabilities (not counts) keep it in float64 with no overflow; about 1000 small numpy steps, once.
    """
    table: dict[tuple[int, int], np.ndarray] = {}
    prev = [np.ones(1) for _ in range(EXACT_MAX_LARGE + 1)]  # m = 0: U = 0 surely
    for m in range(1, EXACT_MAX_SMALL + 1):
        cur = [np.ones(1)]  # n = 0
        for n in range(1, EXACT_MAX_LARGE + 1):
            pmf = np.zeros(m * n + 1)
            pmf[n : n + (m - 1) * n + 1] += m / (m + n) * prev[n]
            pmf[: m * (n - 1) + 1] += n / (m + n) * cur[n - 1]
            cur.append(pmf)
            table[(m, n)] = np.cumsum(pmf)
        prev = cur
    return table


def _exact_two_sided(u: np.ndarray, m: int, n: int) -> np.ndarray:
    """Two-sided exact p of integer U values (no ties) for sample sizes m and n; U is symmetric."""
    small, large = min(m, n), max(m, n)
    cdf = _u_cdf_table()[(small, large)]
    k = np.rint(u).astype(np.int64)
    lower = cdf[k]  # P(U <= u)
    upper = cdf[m * n - k]  # P(U >= u) = P(U <= mn - u) by symmetry, without 1 - cdf cancellation
    return np.minimum(1.0, 2.0 * np.minimum(lower, upper))


_erfc = np.frompyfunc(math.erfc, 1, 1)


def mann_whitney_u(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise Mann-Whitney U of y against x: (U_y, two-sided p). x: (g, m), y: (g, n), g >= 0.

    U_y counts pairs with y > x (ties count half), so U_y > m*n/2 means NEW tends to be larger.
    Vectorised over rows: one argsort of the pooled samples, average ranks for ties.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim == 1:
        u, p = mann_whitney_u(x[None, :], y[None, :])
        return u, p
    g, m = x.shape
    n = y.shape[1]
    size = m + n
    pooled = np.concatenate([x, y], axis=1)
    order = np.argsort(pooled, axis=1, kind="stable")
    ordered = np.take_along_axis(pooled, order, axis=1)
    idx = np.broadcast_to(np.arange(size), (g, size))
    starts_run = np.ones((g, size), dtype=bool)
    starts_run[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends_run = np.ones((g, size), dtype=bool)
    ends_run[:, :-1] = starts_run[:, 1:]
    start = np.maximum.accumulate(np.where(starts_run, idx, 0), axis=1)
    end = np.minimum.accumulate(np.where(ends_run, idx, size - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((g, size))
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=1)
    u_y = ranks[:, m:].sum(axis=1) - n * (n + 1) / 2.0
    run_len = end - start + 1
    tie_sum = (run_len.astype(float) ** 2 - 1.0).sum(axis=1)  # sum over tie groups of t^3 - t
    has_ties = tie_sum > 0

    mean = m * n / 2.0
    var = m * n / 12.0 * ((size + 1) - tie_sum / (size * (size - 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var > 0, (np.abs(u_y - mean) - 0.5).clip(min=0) / np.sqrt(var), 0.0)
    p = np.minimum(1.0, np.asarray(_erfc(z / math.sqrt(2.0)), dtype=float)) if g else np.zeros(0)
    if min(m, n) <= EXACT_MAX_SMALL and max(m, n) <= EXACT_MAX_LARGE and min(m, n) > 0:
        exact = ~has_ties
        if exact.any():
            p[exact] = _exact_two_sided(u_y[exact], m, n)
    return u_y, p


def bh_adjust(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order."""
    p = np.asarray(p, dtype=float)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1.0)
    q = np.empty(m)
    q[order] = q_sorted
    return q


# --- reading runs ---------------------------------------------------------------------------------------


@dataclass
class RunData:
    """What compare needs of one run: its run.json and the latest record of each cell."""

    directory: str
    meta: dict[str, Any]
    records: dict[str, dict[str, Any]]  # cell_id -> latest final record (or latest record if none is final)
    schema_versions: set[Any] = field(default_factory=set)

    @classmethod
    def from_records(
        cls, meta: Mapping[str, Any], records: Iterable[Mapping[str, Any]], directory: str = "<memory>"
    ) -> RunData:
        latest: dict[str, dict[str, Any]] = {}
        versions: set[Any] = {meta.get("schema_version", SCHEMA_VERSION)}
        for record in records:
            versions.add(record.get("schema_version", SCHEMA_VERSION))
            current = latest.get(record["cell_id"])
            final = record.get("status") in FINAL_STATUSES
            if current is None or final or current.get("status") not in FINAL_STATUSES:
                latest[record["cell_id"]] = record if isinstance(record, dict) else dict(record)
        return cls(directory, dict(meta), latest, versions)

    @classmethod
    def load(cls, directory: str | Path) -> RunData:
        store = RunStore.open(directory)  # StoreError: not a run, or a damaged run.json
        return cls.from_records(store.meta, store.records(), str(directory))

    @property
    def model(self) -> str | None:
        spec = self.meta.get("spec")
        if isinstance(spec, Mapping) and spec.get("model"):
            return str(spec["model"])
        for record in self.records.values():
            if record.get("model"):
                return str(record["model"])
        return None

    @property
    def fingerprint(self) -> str | None:
        checkpoint = self.meta.get("checkpoint")
        if isinstance(checkpoint, Mapping) and checkpoint.get("fingerprint"):
            return str(checkpoint["fingerprint"])
        for record in self.records.values():
            if record.get("checkpoint"):
                return str(record["checkpoint"])
        return None

    @property
    def params(self) -> int | None:
        """Parameter count of the model, from any record that loaded it."""
        for record in self.records.values():
            if isinstance(record.get("params"), int):
                return int(record["params"])
        return None

    @property
    def environment(self) -> dict[str, Any]:
        envs = environments(self.meta)
        return dict(envs[0]) if envs and isinstance(envs[0], Mapping) else {}


def _model_key(model: str | None) -> str | None:
    """A preset name as is; a checkpoint path by its last part without a cache hash ("name-<16 hex>")."""
    if model is None:
        return None
    name = (
        model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
        if ("/" in model or "\\" in model)
        else model
    )
    return re.sub(r"-[0-9a-f]{16}$", "", name).lower()


def _check_comparable(base: RunData, new: RunData) -> list[str]:
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
    base_key, new_key = _model_key(base.model), _model_key(new.model)
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


# --- matching -------------------------------------------------------------------------------------------


def _knob_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(record.get(knob) for knob in KNOBS)


def _match(
    base: RunData, new: RunData
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], str, list[str], list[str], list[str]]:
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
    notes.append(f"Cells were matched by knobs ({', '.join(KNOBS)}), not by cell_id: {why}.")
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


# --- judging --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class MetricResult:
    """The verdict on one metric of one matched cell."""

    cell: str  # the cell's label (dtype/quant/attn/ckpt/cache)
    base_cell_id: str
    new_cell_id: str
    metric: str
    kind: str  # "samples" (tested), "single value" (min effect only)
    better: str  # "higher" or "lower"
    base: float | None  # median (or the single value)
    new: float | None
    change: float | None  # new / base - 1
    n_base: int
    n_new: int
    p: float | None = None
    q: float | None = None
    verdict: str = "not judged"  # regression, improvement, no change, not judged
    reason: str | None = None


@dataclass
class StatusChange:
    cell: str
    base_cell_id: str
    new_cell_id: str
    base_status: str
    new_status: str
    verdict: str  # regression, improvement, changed
    reason: str | None


@dataclass
class Comparison:
    base_dir: str
    new_dir: str
    model: str | None
    matched_by: str
    notes: list[str]
    environment: list[tuple[str, Any, Any]]  # (field, BASE, NEW) where they differ
    commits: tuple[Any, Any]
    cells_matched: int
    base_only: list[str]
    new_only: list[str]
    results: list[MetricResult]
    status_changes: list[StatusChange]
    min_effect: float
    alpha: float
    tests: int  # metrics tested (the BH family size)

    def of(self, verdict: str) -> list[MetricResult]:
        return [r for r in self.results if r.verdict == verdict]

    @property
    def regressions(self) -> list[MetricResult]:
        return sorted(self.of("regression"), key=lambda r: -_worse_by(r))

    @property
    def improvements(self) -> list[MetricResult]:
        return sorted(self.of("improvement"), key=_worse_by)

    @property
    def status_regressions(self) -> list[StatusChange]:
        return [s for s in self.status_changes if s.verdict == "regression"]

    @property
    def status_improvements(self) -> list[StatusChange]:
        return [s for s in self.status_changes if s.verdict == "improvement"]

    def counts(self) -> dict[str, int]:
        not_judged = self.of("not judged")
        reasons: dict[str, int] = defaultdict(int)
        for r in not_judged:
            reasons[r.reason or "?"] += 1
        return {
            "regressions": len(self.of("regression")) + len(self.status_regressions),
            "improvements": len(self.of("improvement")) + len(self.status_improvements),
            "unchanged": len(self.of("no change")),
            "not_judged": len(not_judged),
            **{f"not_judged.{k}": v for k, v in sorted(reasons.items())},
            "cells_matched": self.cells_matched,
            "cells_only_in_base": len(self.base_only),
            "cells_only_in_new": len(self.new_only),
            "tests": self.tests,
        }

    @property
    def exit_code(self) -> int:
        return EXIT_REGRESSION if self.of("regression") or self.status_regressions else EXIT_OK


def _worse_by(r: MetricResult) -> float:
    """How much worse NEW is, as a fraction (negative: better)."""
    if r.change is None:
        return 0.0
    return r.change if r.better == "lower" else -r.change


@lru_cache(maxsize=4096)
def _better(metric: str) -> str | None:
    if metric.endswith("_per_s"):
        return "higher"
    if metric.endswith(("_s", "_bytes")):
        return "lower"
    return None


_MEMORY = re.compile(r"mem\.(?:footprint_bytes|(?:load|prefill|train|decode)\.(?!estimate)[a-z_]+_bytes)")


def _metric_names(record: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(timed metric names, memory metric names) of a record."""
    timed = [key[:-8] for key in record if key.endswith(".samples")]
    timed += [name for name in SINGLE_SHOT_TIMINGS if name in record and name not in timed]  # layout only
    memory = [
        key for key in record if key.startswith("mem.") and key.endswith("_bytes") and _MEMORY.fullmatch(key)
    ]
    return timed, memory


class _NameCache:
    """Records of one run share a handful of key layouts; find their metric names once per layout."""

    def __init__(self) -> None:
        self._by_layout: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}

    def __call__(self, record: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        layout = tuple(record)
        names = self._by_layout.get(layout)
        if names is None:
            names = self._by_layout[layout] = _metric_names(record)
        return names


@lru_cache(maxsize=4096)
def _keys(name: str) -> tuple[str, str]:
    return f"{name}.samples", f"{name}.noisy"


def _timed(record: Mapping[str, Any], name: str) -> tuple[float | None, list[Any] | None, bool | None]:
    """(median, samples, noisy flag) of a timed metric; a single-shot timing is one sample."""
    samples_key, noisy_key = _keys(name)
    value, samples, flag = record.get(name), record.get(samples_key), record.get(noisy_key)
    if type(value) is float and type(samples) is list and math.isfinite(value):  # the runner's records
        return value, samples, flag if type(flag) is bool else None
    median = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    if not isinstance(samples, list):
        samples = None if median is None else [median]
    elif median is None and samples:
        median = float(np.nanmedian(np.array(samples, dtype=float)))
    return median, samples, flag if isinstance(flag, bool) else None


def _noisy(samples: np.ndarray) -> bool:
    """The runner's rule, for records that carry samples but no `.noisy` flag."""
    if samples.size < 2:
        return False
    q1, median, q3 = np.quantile(samples, [0.25, 0.5, 0.75])
    return bool(median > 0 and (q3 - q1) / median > NOISY_REL_IQR)


def _min_p(m: int, n: int) -> float:
    """The smallest two-sided p a rank test can give for sample sizes m and n (no ties)."""
    return min(1.0, 2.0 / math.comb(m + n, m))


def _label(base: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    label = new.get("label") or base.get("label")
    if label:
        return str(label)
    ckpt = "ckpt" if new.get("grad_ckpt") else "no-ckpt"
    return f"{new.get('dtype')}/{new.get('quant')}/{new.get('attn')}/{ckpt}/cache-{new.get('use_cache')}"


def _status_change(label: str, b: Mapping[str, Any], n: Mapping[str, Any]) -> StatusChange | None:
    bs, ns = str(b.get("status")), str(n.get("status"))
    if bs == ns:
        return None
    reason = n.get("reason") if ns != "ok" else b.get("reason")
    if bs == "ok" and ns in FAILED_STATUSES:
        verdict = "regression"
    elif bs in FAILED_STATUSES and ns == "ok":
        verdict = "improvement"
    else:
        verdict = "changed"  # e.g. skipped on one host, interrupted: reported, not judged
    return StatusChange(label, b["cell_id"], n["cell_id"], bs, ns, verdict, str(reason) if reason else None)


def _memory_result(
    label: str, b_id: str, n_id: str, name: str, bv: Any, nv: Any, min_effect: float
) -> MetricResult:
    base = float(bv) if isinstance(bv, (int, float)) else None
    new = float(nv) if isinstance(nv, (int, float)) else None
    result = MetricResult(label, b_id, n_id, name, "single value", "lower", base, new, None, 1, 1)
    if base is None or new is None:
        result.reason = "missing in BASE" if base is None else "missing in NEW"
    elif base <= 0:
        result.reason = "zero in BASE"
    else:
        result.change = change = new / base - 1.0
        big = abs(change) >= min_effect and abs(new - base) >= MEM_ABS_FLOOR_BYTES
        result.verdict = ("regression" if change > 0 else "improvement") if big else "no change"
    return result


def compare_runs(base: RunData, new: RunData, *, min_effect: float = 0.05, alpha: float = 0.01) -> Comparison:
    """Judge every metric of every matched cell; raises CompareError on bad input."""
    if not 0.0 < alpha < 1.0:
        raise CompareError(f"--alpha must be between 0 and 1, got {alpha}.")
    if not min_effect >= 0.0:
        raise CompareError(f"--min-effect must be 0 or more, got {min_effect}.")
    notes = _check_comparable(base, new)
    pairs, matched_by, match_notes, base_only, new_only = _match(base, new)
    if not pairs:
        raise CompareError(
            f"no cell of NEW {new.directory} matches a cell of BASE {base.directory} by cell_id or by knobs; "
            "compare runs of the same matrix."
        )
    results: list[MetricResult] = []
    status_changes: list[StatusChange] = []
    # Tests to run, grouped by sample sizes so each group is one vectorised call.
    pending: list[tuple[int, Any, Any, bool | None, bool | None]] = []  # timed metrics to judge
    names_of = _NameCache()
    for b, n in pairs:
        label = _label(b, n)
        if b.get("status") != "ok" or n.get("status") != "ok":
            change = _status_change(label, b, n)
            if change is not None:
                status_changes.append(change)
            continue
        b_timed, b_memory = names_of(b)
        n_timed, n_memory = names_of(n)
        b_id, n_id = b["cell_id"], n["cell_id"]
        for name in b_timed if b_timed == n_timed else sorted({*b_timed, *n_timed}):
            better = _better(name)
            if better is None:
                continue
            bm, xs, b_noisy = _timed(b, name)
            nm, ys, n_noisy = _timed(n, name)
            if bm is None and nm is None:
                continue  # measured in neither run (a workload this cell does not run)
            result = MetricResult(label, b_id, n_id, name, "samples", better, bm, nm, None,
                                  len(xs) if xs else 0, len(ys) if ys else 0)  # fmt: skip
            results.append(result)
            if bm is None or nm is None:
                result.reason = "missing in BASE" if bm is None else "missing in NEW"
            elif bm <= 0:
                result.reason = "zero in BASE"
            else:
                result.change = nm / bm - 1.0
                pending.append((len(results) - 1, xs, ys, b_noisy, n_noisy))
        for name in b_memory if b_memory == n_memory else sorted({*b_memory, *n_memory}):
            bv, nv = b.get(name), n.get(name)
            if bv is None and nv is None:
                continue  # not measured on either host (e.g. the CUDA allocator on a CPU)
            results.append(_memory_result(label, b_id, n_id, name, bv, nv, min_effect))

    tested = _judge(results, pending, min_effect=min_effect, alpha=alpha)
    notes += _power_notes(results, tested, alpha)
    base_env, new_env = base.environment, new.environment
    return Comparison(
        base_dir=base.directory,
        new_dir=new.directory,
        model=new.model,
        matched_by=matched_by,
        notes=match_notes + notes + _state_notes(base, new),
        environment=_env_differences(base, new),
        commits=(base_env.get("git_commit"), new_env.get("git_commit")),
        cells_matched=len(pairs),
        base_only=base_only,
        new_only=new_only,
        results=results,
        status_changes=status_changes,
        min_effect=min_effect,
        alpha=alpha,
        tests=len(tested),
    )


def _judge(
    results: list[MetricResult],
    pending: list[tuple[int, Any, Any, bool | None, bool | None]],
    *,
    min_effect: float,
    alpha: float,
) -> list[int]:
    """Give each pending timed metric its verdict; returns the indexes of those tested (the BH family)."""
    by_size: dict[tuple[int, int], list[tuple[int, Any, Any, bool | None, bool | None]]] = defaultdict(list)
    for item in pending:
        _, xs, ys, _, _ = item
        if len(xs) < MIN_N or len(ys) < MIN_N:
            results[item[0]].reason = f"n<{MIN_N}"
        else:
            by_size[(len(xs), len(ys))].append(item)

    tested: list[int] = []
    p_values: list[float] = []
    directions: list[float] = []
    for (m, k), items in by_size.items():  # one vectorised test per pair of sample sizes
        u_y: np.ndarray
        p: np.ndarray
        x = np.array([item[1] for item in items], dtype=float)  # null (a non-finite sample) becomes NaN
        y = np.array([item[2] for item in items], dtype=float)
        b_flags = [item[3] for item in items]
        n_flags = [item[4] for item in items]
        unusual = np.isnan(x).any(axis=1) | np.isnan(y).any(axis=1)
        unusual |= np.array([flag is None for flag in b_flags]) | np.array([flag is None for flag in n_flags])
        noisy = np.array([bool(a) or bool(b) for a, b in zip(b_flags, n_flags, strict=True)]) & ~unusual
        for row in np.flatnonzero(noisy):
            results[items[row][0]].reason = "noisy"
        for row in np.flatnonzero(unusual):  # the rare slow path: recount, recheck noise, test alone
            index, _, _, b_noisy, n_noisy = items[row]
            _judge_one(results, index, x[row], y[row], (b_noisy, n_noisy), (tested, p_values, directions))
        keep = ~(noisy | unusual)
        if not keep.any():
            continue
        u_y, p = mann_whitney_u(x[keep], y[keep])
        tested += [item[0] for item, kept in zip(items, keep, strict=True) if kept]
        p_values += p.tolist()
        directions += (u_y - m * k / 2.0).tolist()
    q_values = bh_adjust(p_values)
    for index, p_value, q, direction in zip(tested, p_values, q_values.tolist(), directions, strict=True):
        result = results[index]
        result.p, result.q = p_value, q
        change = result.change or 0.0
        # The test's direction must agree with the medians' (a shift, not only a change of shape).
        agrees = direction != 0 and (direction > 0) == (change > 0)
        if q <= alpha and abs(change) >= min_effect and agrees:
            result.verdict = "regression" if _worse_by(result) > 0 else "improvement"
        else:
            result.verdict = "no change"
    return tested


def _judge_one(
    results: list[MetricResult],
    index: int,
    x: np.ndarray,
    y: np.ndarray,
    flags: tuple[bool | None, bool | None],
    out: tuple[list[int], list[float], list[float]],
) -> None:
    """One metric with null samples or no `.noisy` flag (records not written by this runner)."""
    result, (b_noisy, n_noisy), (tested, p_values, directions) = results[index], flags, out
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    result.n_base, result.n_new = x.size, y.size
    if x.size < MIN_N or y.size < MIN_N:
        result.reason = f"n<{MIN_N}"
    elif (_noisy(x) if b_noisy is None else b_noisy) or (_noisy(y) if n_noisy is None else n_noisy):
        result.reason = "noisy"
    else:
        u_y, p = mann_whitney_u(x, y)
        tested.append(index)
        p_values.append(float(p[0]))
        directions.append(float(u_y[0]) - x.size * y.size / 2.0)


def _power_notes(results: list[MetricResult], tested: list[int], alpha: float) -> list[str]:
    """Say when some tests had too few samples to ever flag a regression of one metric on its own."""
    if not tested:
        return []
    family = len(tested)
    weak = [i for i in tested if _min_p(results[i].n_base, results[i].n_new) > alpha / family]
    if not weak:
        return []
    smallest = min(weak, key=lambda i: results[i].n_base + results[i].n_new)
    r = results[smallest]
    return [
        f"{len(weak)} of the {family} tested metrics have too few samples to be flagged on their own "
        f"(with n={r.n_base}/{r.n_new} the smallest possible p is {_min_p(r.n_base, r.n_new):.2g}, above "
        f"{alpha:g}/{family}); a regression there is caught only when many metrics move together. "
        "A CI gate should take at least 10 samples per metric."
    ]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Reading and judging 10,000 cells makes millions of acyclic objects (floats, dicts, results); the
    cyclic collector would walk them over and over for nothing (half the time of a big compare)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compare(
    base_dir: str | Path, new_dir: str | Path, *, min_effect: float = 0.05, alpha: float = 0.01
) -> Comparison:
    """Compare two run directories; raises CompareError (a StoreError) on bad input."""
    with _gc_paused():
        return compare_runs(RunData.load(base_dir), RunData.load(new_dir), min_effect=min_effect, alpha=alpha)


# --- environment ----------------------------------------------------------------------------------------


def _gpu_names(env: Mapping[str, Any]) -> str:
    detail = env.get("gpus_detail") or (env.get("host") or {}).get("gpus") or []
    names = [str(g.get("name")) for g in detail if isinstance(g, Mapping) and g.get("name")]
    return ", ".join(names) if names else "none (CPU)"


def _env_fields(run: RunData) -> dict[str, Any]:
    env = run.environment
    host: Mapping[str, Any] = env["host"] if isinstance(env.get("host"), Mapping) else {}
    spec: Mapping[str, Any] = run.meta["spec"] if isinstance(run.meta.get("spec"), Mapping) else {}
    envs = environments(run.meta)
    cpu = env.get("cpu_model")
    if cpu and env.get("cpu_cores_logical"):
        cpu = f"{cpu} ({env['cpu_cores_logical']} threads)"
    return {
        "GPU": _gpu_names(env),
        "driver": env.get("driver_version"),
        "CUDA (driver)": env.get("cuda_driver_version"),
        "CUDA (torch)": env.get("torch_cuda_version"),
        "torch": env.get("torch_version"),
        "transformers": env.get("transformers_version"),
        "bitsandbytes": host.get("bitsandbytes_version", env.get("bitsandbytes_version")),
        "bitsandbytes backend": env.get("bitsandbytes_backend"),
        "peft": env.get("peft_version"),
        "accelerate": env.get("accelerate_version"),
        "flash-attn": env.get("flash_attn_version", host.get("flash_attn_version")),
        "loadbench": env.get("loadbench_version"),
        "python": env.get("python_version"),
        "CPU": cpu,
        "threads per cell": spec.get("threads"),
        "torch threads (host)": env.get("torch_num_threads"),
        "isolation": run.meta.get("isolation"),
        "environments in run": len(envs) if len(envs) > 1 else None,  # resumed or merged elsewhere
    }


def _env_differences(base: RunData, new: RunData) -> list[tuple[str, Any, Any]]:
    b, n = _env_fields(base), _env_fields(new)
    return [(key, b[key], n[key]) for key in b if b[key] != n[key]]


def _state_notes(base: RunData, new: RunData) -> list[str]:
    """GPU throttling after a run: timings of that run may be low for reasons outside the code."""
    notes = []
    for run, name in ((base, "BASE"), (new, "NEW")):
        states = run.meta.get("gpu_state_after")
        if not isinstance(states, Mapping):
            continue
        for lane, state in states.items():
            text = state.get("throttle_reasons_text") if isinstance(state, Mapping) else None
            if text and text not in ("none", "GpuIdle"):
                notes.append(f"{name}: GPU {lane} reported clock throttling after the run ({text}).")
    return notes


# --- output ---------------------------------------------------------------------------------------------


def _fmt_value(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    if metric.endswith("_bytes"):
        if abs(value) >= 1 << 30:
            return f"{value / (1 << 30):.2f} GiB"
        return f"{value / (1 << 20):.1f} MiB"
    if metric.endswith("_per_s"):
        unit = " tok/s" if metric.endswith("tokens_per_s") else "/s"
        return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.3g}{unit}"
    if metric.endswith("_s"):
        if abs(value) < 1e-3:
            return f"{value * 1e6:.3g} µs"
        if abs(value) < 1:
            return f"{value * 1e3:.3g} ms"
        return f"{value:.3g} s"
    return f"{value:.4g}"


def _fmt_change(r: MetricResult) -> str:
    if r.change is None:
        return "–"
    text = f"{r.change * 100:+.1f} %"
    if r.verdict in ("regression", "improvement"):
        text += " (worse)" if r.verdict == "regression" else " (better)"
    return text


def _fmt_evidence(r: MetricResult) -> str:
    if r.kind == "single value":
        return "single value, min-effect only"
    if r.p is None:
        return f"n={r.n_base}/{r.n_new}"
    return f"p={r.p:.2g}, q={r.q:.2g}, n={r.n_base}/{r.n_new}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _metric_table(rows: list[MetricResult], limit: int, *, reason: bool = False) -> list[str]:
    head = "| cell | metric | BASE | NEW | change | " + ("why not judged |" if reason else "evidence |")
    lines = [head, "|---|---|---:|---:|---:|---|"]
    for r in rows[:limit]:
        last = r.reason if reason else _fmt_evidence(r)
        lines.append(
            f"| {_cell(r.cell)} | `{r.metric}` | {_fmt_value(r.metric, r.base)} | "
            f"{_fmt_value(r.metric, r.new)} | {_fmt_change(r)} | {_cell(last)} |"
        )
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more (see `--format json`).")
    return lines


def _status_table(rows: list[StatusChange], limit: int) -> list[str]:
    lines = ["| cell | BASE | NEW | reason |", "|---|---|---|---|"]
    for s in rows[:limit]:
        reason = (s.reason or "")[:200]
        lines.append(f"| {_cell(s.cell)} | {s.base_status} | {s.new_status} | {_cell(reason)} |")
    if len(rows) > limit:
        lines.append(f"\n… and {len(rows) - limit} more (see `--format json`).")
    return lines


def summary_line(c: Comparison) -> str:
    counts = c.counts()
    icon = "❌" if c.exit_code else "✅"
    reasons = ", ".join(
        f"{v} {k.removeprefix('not_judged.')}" for k, v in counts.items() if k.startswith("not_judged.")
    )
    not_judged = f"{counts['not_judged']} not judged" + (f" ({reasons})" if reasons else "")
    return (
        f"{icon} {counts['regressions']} regression(s), {counts['improvements']} improvement(s), "
        f"{counts['unchanged']} unchanged, {not_judged} · {c.cells_matched} cells matched by {c.matched_by}"
    )


def _markdown(c: Comparison, limit: int) -> str:
    out = [f"## loadbench compare: {summary_line(c)}", ""]
    out.append(f"BASE `{c.base_dir}` → NEW `{c.new_dir}` · model `{c.model}`")
    if c.commits[0] != c.commits[1] and any(c.commits):
        out[-1] += f" · commit `{str(c.commits[0])[:12]}` → `{str(c.commits[1])[:12]}`"
    out.append("")
    for note in c.notes:
        out.append(f"> **Note:** {note}")
        out.append("")
    if c.environment:
        out += ["**Environment differences** (timings can differ for these reasons alone):", ""]
        out += ["| | BASE | NEW |", "|---|---|---|"]
        out += [f"| {k} | {_cell(b)} | {_cell(n)} |" for k, b, n in c.environment]
        out.append("")
    if c.base_only or c.new_only:
        out += [f"Unmatched cells: {len(c.base_only)} only in BASE, {len(c.new_only)} only in NEW.", ""]
    sections = [
        ("Regressions", c.regressions, c.status_regressions),
        ("Improvements", c.improvements, c.status_improvements),
    ]
    for title, metrics, statuses in sections:
        if not metrics and not statuses:
            continue
        out += [f"### {title} ({len(metrics) + len(statuses)})", ""]
        if statuses:
            out += [*_status_table(statuses, limit), ""]
        if metrics:
            out += [*_metric_table(metrics, limit), ""]
    other_status = [s for s in c.status_changes if s.verdict == "changed"]
    if other_status:
        out += [f"<details><summary>Status changed, not judged ({len(other_status)})</summary>", ""]
        out += [*_status_table(other_status, limit), "", "</details>", ""]
    unchanged = c.of("no change")
    if unchanged:
        out += [f"<details><summary>Unchanged ({len(unchanged)})</summary>", ""]
        out += [*_metric_table(unchanged, limit), "", "</details>", ""]
    not_judged = c.of("not judged")
    if not_judged:
        out += [f"<details><summary>Not judged ({len(not_judged)})</summary>", ""]
        out += [*_metric_table(not_judged, limit, reason=True), "", "</details>", ""]
    out.append(
        f"<sub>A metric is a regression or improvement only if a Mann-Whitney U test on its samples "
        f"(Benjamini-Hochberg over {c.tests} tested metrics, q ≤ {c.alpha:g}) and a median change of at "
        f"least {c.min_effect:.0%} both say so; noisy metrics (IQR/median > {NOISY_REL_IQR:.0%}) and those "
        f"with n < {MIN_N} are not judged; memory is a single value judged by the {c.min_effect:.0%} "
        f"minimum effect (and ≥ 1 MiB) only.</sub>"
    )
    return "\n".join(out) + "\n"


def render_markdown(c: Comparison, *, limit: int = 200, max_chars: int = MARKDOWN_LIMIT) -> str:
    """Markdown for a pull-request comment: summary, regressions, improvements, then details."""
    text = _markdown(c, limit)
    while len(text) > max_chars and limit > 5:
        limit //= 2
        text = _markdown(c, limit)
    return text


def _jsonable(value: Any) -> Any:
    """NaN and infinity are not JSON: null, as everywhere in loadbench."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


_RESULT_FIELDS = tuple(field.name for field in fields(MetricResult))


def to_dict(c: Comparison) -> dict[str, Any]:
    """The comparison as plain JSON-ready data (the `--format json` document)."""
    get = attrgetter(*_RESULT_FIELDS)
    return {
        "format_version": JSON_FORMAT_VERSION,
        "base": c.base_dir,
        "new": c.new_dir,
        "model": c.model,
        "matched_by": c.matched_by,
        "notes": c.notes,
        "environment_differences": [{"field": k, "base": b, "new": n} for k, b, n in c.environment],
        "commits": {"base": c.commits[0], "new": c.commits[1]},
        "settings": {
            "min_effect": c.min_effect,
            "alpha": c.alpha,
            "test": "mann-whitney-u",
            "correction": "benjamini-hochberg",
            "min_n": MIN_N,
            "noisy_rel_iqr": NOISY_REL_IQR,
            "memory_abs_floor_bytes": MEM_ABS_FLOOR_BYTES,
        },
        "summary": c.counts(),
        "exit_code": c.exit_code,
        "status_changes": [asdict(s) for s in c.status_changes],
        "results": [dict(zip(_RESULT_FIELDS, get(r), strict=True)) for r in c.results],
        "cells_only_in_base": c.base_only,
        "cells_only_in_new": c.new_only,
    }


def render_json(c: Comparison) -> str:
    """One JSON object; compact (the C encoder: a 10,000-cell comparison renders in well under a second)."""
    doc = to_dict(c)
    try:
        text = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_jsonable(doc), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text + "\n"


def render(c: Comparison, fmt: str = "markdown") -> str:
    return render_json(c) if fmt == "json" else render_markdown(c)


def _render_error(message: str, fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"format_version": JSON_FORMAT_VERSION, "error": message, "exit_code": 2}) + "\n"
    return f"## loadbench compare: cannot compare\n\n{message}\n"


# --- command line ---------------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    """0.05 or 5%."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 0.05 or 5%, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a fraction of 0 or more, got {text!r}")
    return value


def _alpha(text: str) -> float:
    value = _fraction(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"--alpha must be between 0 and 1, got {text!r}")
    return value


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="baseline run directory")
    p.add_argument("new", metavar="NEW", help="run directory to judge against BASE")
    p.add_argument(
        "--min-effect",
        type=_fraction,
        default=0.05,
        help="smallest median change that counts, as a fraction or percent (default 0.05)",
    )
    p.add_argument(
        "--alpha",
        type=_alpha,
        default=0.01,
        help="false-discovery rate of the tests, Benjamini-Hochberg over all tested metrics (default 0.01)",
    )
    p.add_argument("--format", choices=("markdown", "json"), default="markdown", help="output format")
    p.add_argument("--out", metavar="FILE", help="write the report here (default: standard output)")


def run_compare(args: argparse.Namespace) -> int:
    """The `compare` subcommand: 0 no significant regression, 1 a regression, 2 bad input."""
    try:
        comparison = compare(args.base, args.new, min_effect=args.min_effect, alpha=args.alpha)
    except StoreError as exc:  # CompareError too: one sentence
        print(f"loadbench compare: {exc}", file=sys.stderr)
        if args.out:
            Path(args.out).write_text(_render_error(str(exc), args.format), encoding="utf-8")
        return EXIT_BAD_INPUT
    with _gc_paused():
        text = render(comparison, args.format)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(summary_line(comparison))
    else:
        sys.stdout.write(text)
    return comparison.exit_code


def register(subparsers: Any) -> None:
    """Add `compare` to the loadbench subcommands (argparse subparsers); func returns the exit code."""
    p = subparsers.add_parser(
        "compare",
        help="regression verdicts between two runs; exit 1 on a significant regression",
        description=(
            "Judge every timed metric of NEW against BASE from their samples (Mann-Whitney U, "
            "Benjamini-Hochberg, minimum effect). Exit 0: no significant regression; 1: at least one; "
            "2: bad input."
        ),
    )
    _add_arguments(p)
    p.set_defaults(func=run_compare)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.analysis.compare BASE NEW ...`, the same as `loadbench compare`."""
    parser = argparse.ArgumentParser(prog="loadbench compare")
    _add_arguments(parser)
    return run_compare(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
