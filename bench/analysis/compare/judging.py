"""`compare`'s verdicts: each timed metric of each matched cell judged from its samples, not its median alone.

A metric is a regression or an improvement only when a Mann-Whitney U test (Benjamini-Hochberg over every
metric judged in the comparison) and a minimum effect on the median both say so. Noise does not remove a
metric: it raises the effect that metric must show (the larger relative IQR of the two runs, at least the
minimum effect). Metrics with fewer than MIN_N samples in either run are "not judged" with that reason.

Samples taken within one run cannot see how much the same cell moves from one run to the next (a shared
machine's speed wanders over seconds to minutes; each cell sees its own stretch of it), so the test on them
alone calls differences between two runs of identical code. The metric's other cells can: the robust
spread (`shortest_half`) of one metric's log-changes across the matched cells estimates that run-to-run
spread (an empirical null, as in Efron's large-scale testing), and a cell's change must exceed z of those
spreads, z from the Bonferroni bound alpha / (2 x tests), to count. It is centred on no change, not on the
run's median change, so a whole run that moves together is still judged.

Memory metrics are single values, compared by the minimum effect alone (and at least 1 MiB). A cell
that was ok in BASE and fails in NEW (schema.FAILED_STATUSES) is a regression too. A metric's direction
comes from the schema's registry (schema.METRICS), never from its name.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bench.analysis.compare.drift import machine_drift, rescale
from bench.analysis.compare.matching import check_comparable, match
from bench.analysis.compare.results import Comparison, MetricResult, StatusChange, worse_by
from bench.analysis.compare.runs import RunData, env_differences, state_notes
from bench.analysis.compare.stats import bh_adjust, mann_whitney_u, min_p
from bench.errors import CompareError
from bench.schema import FAILED_STATUSES, METRICS, is_memory, record_label

__all__ = [
    "MEM_ABS_FLOOR_BYTES",
    "MIN_N",
    "SPREAD_MIN_CELLS",
    "compare",
    "compare_runs",
    "gc_paused",
    "run_to_run_spread",
]

MIN_N = 5  # fewer samples than this in either run: not judged
SPREAD_MIN_CELLS = 8  # a metric measured in fewer matched cells has no run-to-run spread estimate
MEM_ABS_FLOOR_BYTES = 1 << 20  # a memory change smaller than 1 MiB is never a verdict
# Timings a record may hold as one value (no samples): shown, and judged once the runner records samples.
SINGLE_SHOT_TIMINGS = ("load.model_s",)


@lru_cache(maxsize=4096)
def _better(name: str) -> str | None:
    """ "higher" or "lower" from the registry; None for a column that is no judged metric."""
    entry = METRICS.get(name)
    return entry.better if entry is not None else None


def _memory_better(name: str) -> str:
    """Every memory metric the registry lists is lower-is-better; one it does not list is memory all the same."""
    return _better(name) or "lower"


def _metric_names(record: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(timed metric names, memory metric names) of a record."""
    timed = [key[:-8] for key in record if key.endswith(".samples")]
    timed += [name for name in SINGLE_SHOT_TIMINGS if name in record and name not in timed]  # layout only
    memory = [key for key in record if key.startswith("mem.") and is_memory(key)]
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


def _timed(record: Mapping[str, Any], name: str) -> tuple[float | None, list[Any] | None]:
    """(median, samples) of a timed metric; a single-shot timing is one sample."""
    value, samples = record.get(name), record.get(f"{name}.samples")
    if type(value) is float and type(samples) is list and math.isfinite(value):  # the runner's records
        return value, samples
    median = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    if not isinstance(samples, list):
        samples = None if median is None else [median]
    elif median is None and samples:
        median = float(np.nanmedian(np.array(samples, dtype=float)))
    return median, samples


def _label(base: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    return record_label(new) if new.get("label") or not base.get("label") else record_label(base)


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
    result = MetricResult(
        label, b_id, n_id, name, "single value", _memory_better(name), base, new, None, 1, 1
    )
    if base is None or new is None:
        result.reason = "missing in BASE" if base is None else "missing in NEW"
    elif base <= 0:
        result.reason = "zero in BASE"
    else:
        result.change = change = new / base - 1.0
        big = abs(change) >= min_effect and abs(new - base) >= MEM_ABS_FLOOR_BYTES
        result.verdict = ("regression" if change > 0 else "improvement") if big else "no change"
    return result


def compare_runs(
    base: RunData,
    new: RunData,
    *,
    min_effect: float = 0.05,
    alpha: float = 0.01,
    fail_on_confounded: bool = False,
) -> Comparison:
    """Judge every metric of every matched cell; raises CompareError on bad input.

    When the runs' calibration probes differ by more than min_effect the timed metrics are judged a second
    time on NEW's samples rescaled by the machine-speed ratio (the normalised column)."""
    if not 0.0 < alpha < 1.0:
        raise CompareError(f"--alpha must be between 0 and 1, got {alpha}.")
    if not min_effect >= 0.0:
        raise CompareError(f"--min-effect must be 0 or more, got {min_effect}.")
    notes = check_comparable(base, new)
    drift = machine_drift(base, new, min_effect)
    pairs, matched_by, match_notes, base_only, new_only = match(base, new)
    if not pairs:
        raise CompareError(
            f"no cell of NEW {new.directory} matches a cell of BASE {base.directory} by cell_id or by knobs; "
            "compare runs of the same matrix."
        )
    results: list[MetricResult] = []
    status_changes: list[StatusChange] = []
    # Tests to run, grouped by sample sizes so each group is one vectorised call.
    pending: list[tuple[int, Any, Any]] = []  # timed metrics to judge
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
            bm, xs = _timed(b, name)
            nm, ys = _timed(n, name)
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
                pending.append((len(results) - 1, xs, ys))
        for name in b_memory if b_memory == n_memory else sorted({*b_memory, *n_memory}):
            bv, nv = b.get(name), n.get(name)
            if bv is None and nv is None:
                continue  # not measured on either host (e.g. the CUDA allocator on a CPU)
            results.append(_memory_result(label, b_id, n_id, name, bv, nv, min_effect))

    tested, spread = _judge(results, pending, min_effect=min_effect, alpha=alpha)
    if drift.confounded and drift.ratio is not None:
        _judge_normalised(results, pending, drift.ratio, min_effect=min_effect, alpha=alpha)
    notes += _power_notes(results, tested, alpha) + _spread_notes(spread, bool(tested))
    base_env, new_env = base.environment, new.environment
    return Comparison(
        base_dir=base.directory,
        new_dir=new.directory,
        model=new.model,
        matched_by=matched_by,
        notes=match_notes + notes + state_notes(base, new),
        environment=env_differences(base, new),
        commits=(base_env.get("git_commit"), new_env.get("git_commit")),
        cells_matched=len(pairs),
        base_only=base_only,
        new_only=new_only,
        results=results,
        status_changes=status_changes,
        min_effect=min_effect,
        alpha=alpha,
        tests=len(tested),
        drift=drift,
        fail_on_confounded=fail_on_confounded,
    )


def _rel_iqr(samples: np.ndarray) -> np.ndarray:
    """Row-wise IQR / median of samples (g, n), NaN-free rows; 0 where the median is not positive."""
    q1, median, q3 = np.quantile(samples, [0.25, 0.5, 0.75], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(median > 0, (q3 - q1) / median, 0.0)


def _judge(
    results: list[MetricResult],
    pending: list[tuple[int, Any, Any]],
    *,
    min_effect: float,
    alpha: float,
) -> tuple[list[int], dict[str, tuple[float, float]]]:
    """Give each pending timed metric its verdict; returns the indexes of those tested (the BH family) and
    each metric's (run-to-run spread, |log-change| needed) where it could be estimated.

    Noisy metrics are judged too: the test on the samples carries their spread, and the effect a metric
    must show grows with its noise (the larger relative IQR of the two runs, never below min_effect), so a
    noisy metric needs a bigger change to count but is never dropped.
    """
    by_size: dict[tuple[int, int], list[tuple[int, Any, Any]]] = defaultdict(list)
    for item in pending:
        _, xs, ys = item
        if len(xs) < MIN_N or len(ys) < MIN_N:
            results[item[0]].reason = f"n<{MIN_N}"
        else:
            by_size[(len(xs), len(ys))].append(item)

    tested: list[int] = []
    p_values: list[float] = []
    directions: list[float] = []
    for (m, k), items in by_size.items():  # one vectorised test per pair of sample sizes
        x = np.array([item[1] for item in items], dtype=float)  # null (a non-finite sample) becomes NaN
        y = np.array([item[2] for item in items], dtype=float)
        unusual = np.isnan(x).any(axis=1) | np.isnan(y).any(axis=1)
        for row in np.flatnonzero(unusual):  # the rare slow path: recount and test alone
            _judge_one(results, items[row][0], x[row], y[row], min_effect, (tested, p_values, directions))
        keep = ~unusual
        if not keep.any():
            continue
        needed = np.maximum(min_effect, np.maximum(_rel_iqr(x[keep]), _rel_iqr(y[keep])))
        u_y, p = mann_whitney_u(x[keep], y[keep])
        kept = [item[0] for item, kept in zip(items, keep, strict=True) if kept]
        for index, effect in zip(kept, needed.tolist(), strict=True):
            results[index].needed = effect
        tested += kept
        p_values += p.tolist()
        directions += (u_y - m * k / 2.0).tolist()
    q_values = bh_adjust(p_values)
    spread = _spread_needed(results, tested, alpha)
    for index, p_value, q, direction in zip(tested, p_values, q_values.tolist(), directions, strict=True):
        result = results[index]
        result.p, result.q = p_value, q
        change = result.change or 0.0
        # The test's direction must agree with the medians' (a shift, not only a change of shape).
        agrees = direction != 0 and (direction > 0) == (change > 0)
        needed = result.needed if result.needed is not None else min_effect
        log_needed = spread.get(result.metric, (0.0, 0.0))[1]
        result.spread_needed = math.expm1(log_needed) if log_needed else None
        beyond_spread = change > -1.0 and abs(math.log1p(change)) >= log_needed
        if q <= alpha and abs(change) >= needed and agrees and beyond_spread:
            result.verdict = "regression" if worse_by(result) > 0 else "improvement"
        else:
            result.verdict = "no change"
    return tested, spread


def run_to_run_spread(results: list[MetricResult], tested: list[int]) -> dict[str, float]:
    """metric -> the robust spread (`shortest_half`) of its cells' log-changes: how far one cell of the
    metric moves between the two runs for reasons the within-run samples do not show."""
    logs: dict[str, list[float]] = defaultdict(list)
    for index in tested:
        change = results[index].change
        if change is not None and change > -1.0:
            logs[results[index].metric].append(math.log1p(change))
    return {m: shortest_half(v) for m, v in logs.items() if len(v) >= SPREAD_MIN_CELLS}


def shortest_half(values: list[float]) -> float:
    """Robust spread: the length of the shortest interval holding half the values, over 1.349 (a normal's
    standard deviation). Unlike the MAD it cannot be inflated by a change that moves exactly half the cells
    (every sdpa cell of a matrix, say): one of the two halves is then the shortest."""
    ordered = sorted(values)
    half = math.ceil(len(ordered) / 2)
    return min(ordered[i + half - 1] - ordered[i] for i in range(len(ordered) - half + 1)) / 1.349


def _spread_needed(
    results: list[MetricResult], tested: list[int], alpha: float
) -> dict[str, tuple[float, float]]:
    """metric -> (run-to-run spread, the |log-change| one cell must exceed: z spreads, z for alpha over the
    family)."""
    if not tested:
        return {}
    z = statistics.NormalDist().inv_cdf(1.0 - alpha / (2.0 * len(tested)))
    return {metric: (s, z * s) for metric, s in run_to_run_spread(results, tested).items()}


def _judge_normalised(
    results: list[MetricResult],
    pending: list[tuple[int, Any, Any]],
    ratio: float,
    *,
    min_effect: float,
    alpha: float,
) -> None:
    """The second column: the same judgement on NEW rescaled to BASE's machine speed (its own BH family)."""
    shadow = [replace(r) for r in results]
    scaled: list[tuple[int, Any, Any]] = []
    for index, xs, ys in pending:
        r = shadow[index]
        unit = METRICS[r.metric].unit if r.metric in METRICS else "s"
        ys_scaled = rescale(ys, ratio, unit)
        if r.new is not None and r.base:
            r.new = rescale([r.new], ratio, unit)[0]
            r.change = r.new / r.base - 1.0
        r.p = r.q = r.needed = None
        scaled.append((index, xs, ys_scaled))
    _judge(shadow, scaled, min_effect=min_effect, alpha=alpha)
    for index, _, _ in pending:
        results[index].normalised_change = shadow[index].change
        results[index].normalised_verdict = shadow[index].verdict


def _judge_one(
    results: list[MetricResult],
    index: int,
    x: np.ndarray,
    y: np.ndarray,
    min_effect: float,
    out: tuple[list[int], list[float], list[float]],
) -> None:
    """One metric with null samples (records not written by this runner, or a sample that failed)."""
    result, (tested, p_values, directions) = results[index], out
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    result.n_base, result.n_new = x.size, y.size
    if x.size < MIN_N or y.size < MIN_N:
        result.reason = f"n<{MIN_N}"
        return
    result.needed = float(max(min_effect, _rel_iqr(x[None, :])[0], _rel_iqr(y[None, :])[0]))
    u_y, p = mann_whitney_u(x, y)
    tested.append(index)
    p_values.append(float(p[0]))
    directions.append(float(u_y[0]) - x.size * y.size / 2.0)


def _power_notes(results: list[MetricResult], tested: list[int], alpha: float) -> list[str]:
    """Say when some tests had too few samples to ever flag a regression of one metric on its own."""
    if not tested:
        return []
    family = len(tested)
    weak = [i for i in tested if min_p(results[i].n_base, results[i].n_new) > alpha / family]
    if not weak:
        return []
    smallest = min(weak, key=lambda i: results[i].n_base + results[i].n_new)
    r = results[smallest]
    return [
        f"{len(weak)} of the {family} tested metrics have too few samples to be flagged on their own "
        f"(with n={r.n_base}/{r.n_new} the smallest possible p is {min_p(r.n_base, r.n_new):.2g}, above "
        f"{alpha:g}/{family}); a regression there is caught only when many metrics move together. "
        "A CI gate should take at least 10 samples per metric."
    ]


def _spread_notes(spread: Mapping[str, tuple[float, float]], any_tested: bool) -> list[str]:
    """Say how far one cell moved between the runs for the machine's reasons, and what that costs."""
    if not spread:
        if any_tested:
            return [
                f"Fewer than {SPREAD_MIN_CELLS} matched cells per metric: the run-to-run spread of a cell "
                "cannot be estimated, and the test on the samples alone tends to call the machine's "
                "wandering between runs a change; compare bigger matrices, or repeat the runs."
            ]
        return []
    parts = ", ".join(
        f"{metric} ±{math.expm1(s):.1%} (needs ±{math.expm1(needed):.0%})"
        for metric, (s, needed) in sorted(spread.items())
    )
    return [f"Run-to-run spread of one cell (robust, across the matched cells): {parts}."]


@contextmanager
def gc_paused() -> Iterator[None]:
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
    base_dir: str | Path,
    new_dir: str | Path,
    *,
    min_effect: float = 0.05,
    alpha: float = 0.01,
    fail_on_confounded: bool = False,
) -> Comparison:
    """Compare two run directories; raises CompareError (a StoreError) on bad input."""
    with gc_paused():
        return compare_runs(
            RunData.load(base_dir),
            RunData.load(new_dir),
            min_effect=min_effect,
            alpha=alpha,
            fail_on_confounded=fail_on_confounded,
        )
