"""`ab`'s verdicts: each metric of each cell judged from its rounds, paired (DESIGN section 10).

The unit of evidence is a round: both sides measured one after the other, so the round's log-ratio
new/base of a metric's medians carries the code's effect and little of the machine's wandering. A timed
metric is a regression or an improvement when the signed-rank test over its rounds is significant after
Benjamini-Hochberg over every timed metric judged in the run, and its Hodges-Lehmann ratio is beyond the
minimum effect. Each timed metric is also judged over every cell's rounds at once (pooled_verdicts), in the
same family: a change that moves a metric a little in every cell is seen there first. Memory peaks are single values per round (they agree within 1 % between runs): one changes
when the median of its per-round changes exceeds MEM_REL and MEM_ABS_FLOOR_BYTES. A cell that is ok on one
side and fails on the other in some round is a status change (a regression when the new side fails).

`settled` is the stopping rule the run stage asks after every round: a cell stops once every timed metric's
interval lies inside +-min_effect/2 (no change worth a verdict) or wholly beyond +-min_effect (a change; at
the Bonferroni level of the run's tests, so the change is then significant whatever else the run shows).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.analysis.ab.paired import paired
from bench.analysis.compare.judging import MEM_ABS_FLOOR_BYTES
from bench.analysis.compare.stats import bh_adjust
from bench.schema import AB_SIDES, FAILED_STATUSES, METRICS, RECIPROCALS, is_memory, record_label

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MIN_EFFECT",
    "MEM_REL",
    "MIN_ROUNDS",
    "POOLED_ID",
    "ABJudgement",
    "CellRounds",
    "MetricVerdict",
    "judge",
    "pair_rounds",
    "settled",
]

DEFAULT_MIN_EFFECT = 0.05
DEFAULT_ALPHA = 0.05
MEM_REL = 0.02  # a memory peak must move more than 2 % (and 1 MiB) to be a verdict
MIN_ROUNDS = 3  # fewer paired rounds: a timed metric is "not judged" (no test can be significant)
POOLED_ID = "*"  # the cell_id of a metric judged over every cell's rounds at once
BASE, NEW = AB_SIDES


@dataclass
class CellRounds:
    """One cell's records, paired by round: (base, new) per round in which both sides have a record."""

    cell_id: str
    label: str
    pairs: list[tuple[dict[str, Any], dict[str, Any]]]


@dataclass
class MetricVerdict:
    cell: str
    cell_id: str
    metric: str
    kind: str  # "timed" or "memory"
    better: str
    base: float | None  # the median over rounds of the base side's values
    new: float | None
    n: int  # rounds judged
    ratio: float | None = None  # new / base: Hodges-Lehmann (timed) or the median per-round ratio (memory)
    low: float | None = None  # the ratio's 95 % interval (timed)
    high: float | None = None
    p: float | None = None
    q: float | None = None
    verdict: str = "not judged"  # regression, improvement, no change, not judged
    reason: str | None = None


@dataclass
class StatusVerdict:
    cell: str
    cell_id: str
    round: int
    base_status: str
    new_status: str
    verdict: str  # regression, improvement, changed
    reason: str | None


@dataclass
class ABJudgement:
    min_effect: float
    alpha: float
    cells: int
    rounds: dict[str, int]  # cell_id -> paired rounds
    results: list[MetricVerdict] = field(default_factory=list)
    statuses: list[StatusVerdict] = field(default_factory=list)

    @property
    def regressions(self) -> list[MetricVerdict]:
        return [r for r in self.results if r.verdict == "regression"]

    @property
    def improvements(self) -> list[MetricVerdict]:
        return [r for r in self.results if r.verdict == "improvement"]

    @property
    def status_regressions(self) -> list[StatusVerdict]:
        return [s for s in self.statuses if s.verdict == "regression"]

    @property
    def tests(self) -> int:
        """The Benjamini-Hochberg family: timed metrics tested (a throughput twin is not a test of its own)."""
        return sum(r.p is not None and r.metric not in RECIPROCALS for r in self.results)

    @property
    def regressed(self) -> bool:
        return bool(self.regressions or self.status_regressions)


def pair_rounds(records: Iterable[Mapping[str, Any]]) -> list[CellRounds]:
    """The sides' records grouped by cell and paired by round (the first final record of each counts)."""
    by_key: dict[tuple[str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    labels: dict[str, str] = {}
    for record in records:
        side, round_no = record.get("side"), record.get("ab.round")
        if side not in AB_SIDES or not isinstance(round_no, int) or record.get("status") == "interrupted":
            continue
        by_key[(record["cell_id"], round_no)].setdefault(str(side), dict(record))
        labels.setdefault(record["cell_id"], record_label(record))
    cells: dict[str, CellRounds] = {}
    for (cell_id, _round), sides in sorted(by_key.items()):
        cell = cells.setdefault(cell_id, CellRounds(cell_id, labels[cell_id], []))
        if BASE in sides and NEW in sides:
            cell.pairs.append((sides[BASE], sides[NEW]))
    return list(cells.values())


def _value(record: Mapping[str, Any], name: str) -> float | None:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _timed_names(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    names: list[str] = []
    for base, new in pairs:
        for key in base:
            name = key[: -len(".samples")] if key.endswith(".samples") else None
            if name and f"{name}.samples" in new and name not in names and name in METRICS:
                names.append(name)
    return names


def _memory_names(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """Memory peaks measured on either side (a source this host lacks, NVML on a CPU, is left out)."""
    names: list[str] = []
    for base, new in pairs:
        for key in base:
            measured = _value(base, key) is not None or _value(new, key) is not None
            if is_memory(key) and key in new and key not in names and measured:
                names.append(key)
    return names


def _ok_pairs(cell: CellRounds) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(b, n) for b, n in cell.pairs if b.get("status") == "ok" and n.get("status") == "ok"]


def timed_verdict(cell: CellRounds, name: str) -> MetricVerdict:
    """One timed metric over the cell's ok rounds: estimate, interval and p (q and verdict come later)."""
    better = METRICS[name].better or "lower"
    values = [(_value(b, name), _value(n, name)) for b, n in _ok_pairs(cell)]
    both = [(b, n) for b, n in values if b is not None and n is not None and b > 0 and n > 0]
    result = MetricVerdict(
        cell.label,
        cell.cell_id,
        name,
        "timed",
        better,
        statistics.median(b for b, _ in both) if both else None,
        statistics.median(n for _, n in both) if both else None,
        len(both),
    )
    if len(both) < MIN_ROUNDS:
        result.reason = f"{len(both)} round(s) with the metric on both sides; {MIN_ROUNDS} are needed"
        return result
    test = paired(np.log([n / b for b, n in both]))
    result.ratio, result.p = test.ratio, test.p
    if math.isfinite(test.low) and math.isfinite(test.high):  # 95 % needs 6 rounds
        result.low, result.high = test.ratio_low, test.ratio_high
    return result


def pooled_verdicts(cells: list[CellRounds]) -> list[MetricVerdict]:
    """Each timed metric over every cell's rounds at once (POOLED_ID), when two or more cells have it: a
    change of the code usually moves a metric in every cell a little, which one cell's few rounds cannot
    tell from noise and all of them together can. Each (cell, round) is a pair measured back to back, so
    the pooled log-ratios are as symmetric about zero under no change as one cell's are."""
    logs: dict[str, list[float]] = {}
    cells_with: dict[str, int] = {}
    for cell in cells:
        ok = _ok_pairs(cell)
        for name in _timed_names(ok):
            if name in RECIPROCALS:
                continue
            values = [(_value(b, name), _value(n, name)) for b, n in ok]
            ratios = [math.log(n / b) for b, n in values if b and n and b > 0 and n > 0]
            if ratios:
                logs.setdefault(name, []).extend(ratios)
                cells_with[name] = cells_with.get(name, 0) + 1
    out = []
    for name, ratios in logs.items():
        if cells_with[name] < 2 or len(ratios) < MIN_ROUNDS:
            continue
        test = paired(ratios)
        label = f"all {cells_with[name]} cells, pooled"
        result = MetricVerdict(
            label, POOLED_ID, name, "timed", METRICS[name].better or "lower", None, None, len(ratios)
        )
        result.ratio, result.p = test.ratio, test.p
        if math.isfinite(test.low) and math.isfinite(test.high):
            result.low, result.high = test.ratio_low, test.ratio_high
        out.append(result)
    return out


def memory_verdict(cell: CellRounds, name: str, min_rel: float = MEM_REL) -> MetricVerdict:
    """One memory peak: the median of its per-round changes, beyond MEM_REL and 1 MiB to count."""
    values = [(_value(b, name), _value(n, name)) for b, n in _ok_pairs(cell)]
    both = [(b, n) for b, n in values if b is not None and n is not None]
    result = MetricVerdict(
        cell.label,
        cell.cell_id,
        name,
        "memory",
        "lower",
        statistics.median(b for b, _ in both) if both else None,
        statistics.median(n for _, n in both) if both else None,
        len(both),
    )
    if not both:
        result.reason = "no round with the peak on both sides"
        return result
    if any(b <= 0 for b, _ in both):
        result.reason = "zero on the base side"
        return result
    rel = statistics.median(n / b - 1.0 for b, n in both)
    absolute = statistics.median(n - b for b, n in both)
    result.ratio = 1.0 + rel
    big = abs(rel) > min_rel and abs(absolute) >= MEM_ABS_FLOOR_BYTES
    result.verdict = ("regression" if rel > 0 else "improvement") if big else "no change"
    return result


def status_verdicts(cell: CellRounds) -> list[StatusVerdict]:
    out = []
    for base, new in cell.pairs:
        bs, ns = str(base.get("status")), str(new.get("status"))
        if bs == ns:
            continue
        if bs == "ok" and ns in FAILED_STATUSES:
            verdict, reason = "regression", new.get("reason")
        elif bs in FAILED_STATUSES and ns == "ok":
            verdict, reason = "improvement", base.get("reason")
        else:
            verdict, reason = "changed", new.get("reason") or base.get("reason")
        out.append(
            StatusVerdict(
                cell.label, cell.cell_id, int(base["ab.round"]), bs, ns, verdict, str(reason or "") or None
            )
        )
    return out


def _worse(result: MetricVerdict) -> bool:
    assert result.ratio is not None
    return result.ratio > 1 if result.better == "lower" else result.ratio < 1


def judge(
    records: Iterable[Mapping[str, Any]],
    *,
    min_effect: float = DEFAULT_MIN_EFFECT,
    alpha: float = DEFAULT_ALPHA,
) -> ABJudgement:
    """Every cell's metrics judged from its paired rounds, BH over the run's timed tests."""
    cells = pair_rounds(records)
    out = ABJudgement(min_effect, alpha, len(cells), {c.cell_id: len(c.pairs) for c in cells})
    for cell in cells:
        ok = _ok_pairs(cell)
        out.results += [timed_verdict(cell, name) for name in _timed_names(ok)]
        out.results += [memory_verdict(cell, name) for name in _memory_names(ok)]
        out.statuses += status_verdicts(cell)
    out.results += pooled_verdicts(cells)
    tested = [r for r in out.results if r.p is not None and r.metric not in RECIPROCALS]
    for result, q in zip(tested, bh_adjust(np.array([r.p for r in tested])), strict=True):
        result.q = float(q)
        big = result.ratio is not None and abs(math.log(result.ratio)) >= math.log1p(min_effect)
        if result.q < alpha and big:
            result.verdict = "regression" if _worse(result) else "improvement"
        else:
            result.verdict = "no change"
    mirror_reciprocals(out.results)
    return out


def mirror_reciprocals(results: list[MetricVerdict]) -> None:
    """A throughput in RECIPROCALS takes its time's q and verdict: the same samples, inverted."""
    times = {(r.cell_id, r.metric): r for r in results}
    for result in results:
        twin = times.get((result.cell_id, RECIPROCALS.get(result.metric, "")))
        if twin is None or result.p is None:
            continue
        result.q = twin.q
        result.verdict = twin.verdict
        result.reason = f"the verdict of {twin.metric}, its reciprocal"


def settled(
    records: list[dict[str, Any]],
    min_effect: float = DEFAULT_MIN_EFFECT,
    alpha: float = DEFAULT_ALPHA,
    cells: int = 1,
) -> bool:
    """True once this cell needs no more rounds: every timed metric is either equivalent (its 90 % interval
    inside +-min_effect/2, as a two one-sided test at 5 %) or decided (its interval at the Bonferroni level
    1 - alpha / tests, tests = this cell's timed metrics x `cells`, wholly beyond +-min_effect: then its q
    is below alpha whatever the other cells show). A cell failing on a side in every round settles too."""
    cell_rounds = pair_rounds(records)
    if len(cell_rounds) != 1:
        return False
    cell = cell_rounds[0]
    ok = _ok_pairs(cell)
    if not ok and len(cell.pairs) >= 2:  # failing on a side every time: more rounds add nothing
        return True
    names = [n for n in _timed_names(ok) if n not in RECIPROCALS]
    if len(ok) < MIN_ROUNDS or not names:
        return False
    inside, beyond = math.log1p(min_effect / 2), math.log1p(min_effect)
    decided_level = 1.0 - alpha / (len(names) * max(1, cells))
    for name in names:
        ratios = [(_value(b, name), _value(n, name)) for b, n in ok]
        logs = np.log([n / b for b, n in ratios if b and n and b > 0 and n > 0])
        if len(logs) < MIN_ROUNDS:
            return False
        equivalent = paired(logs, level=0.90)
        if -inside < equivalent.low and equivalent.high < inside:
            continue
        decided = paired(logs, level=decided_level)
        if not (decided.low > beyond or decided.high < -beyond):
            return False
    return True
