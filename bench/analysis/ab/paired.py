"""The paired statistics `ab` judges with: the exact Wilcoxon signed-rank test and its Hodges-Lehmann
estimate and interval, over one metric's per-round log-ratios new/base.

A round measures both sides back to back, so the machine's slow stretches fall on both and cancel in the
round's ratio; what is left varies from round to round, and the test asks whether the ratios sit on one side
of 1 more often and further than chance would put them. The signed-rank test needs no normality and shrugs
off the odd round a noise burst hit on one side only. Its null distribution is exact here (no normal
approximation): rounds are few (at most MAX_EXACT), so the count of rank subsets is a small table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["MAX_EXACT", "Paired", "paired", "signed_rank_cdf"]

MAX_EXACT = 64  # rounds beyond this are not taken (the exact table grows as n^3)


@lru_cache(maxsize=MAX_EXACT + 1)
def signed_rank_cdf(n: int) -> np.ndarray:
    """P(T+ <= t) for t = 0 .. n(n+1)/2 under the null (each rank's sign a fair coin), n >= 1.

    The count of subsets of {1..n} with sum t, built rank by rank: c_k(t) = c_{k-1}(t) + c_{k-1}(t-k).
    Floats hold 2^64 exactly enough for a p-value."""
    if not 1 <= n <= MAX_EXACT:
        raise ValueError(f"signed-rank tables cover 1 to {MAX_EXACT} rounds, got {n}")
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return np.cumsum(counts) / 2.0**n


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


@dataclass(frozen=True)
class Paired:
    """One metric's rounds, judged: the estimate and interval are log-ratios new/base."""

    n: int  # rounds with a value on both sides
    estimate: float  # Hodges-Lehmann: the median of the Walsh averages of the log-ratios
    low: float  # the signed-rank interval at `level`; -inf, inf when too few rounds reach that level
    # (95 % needs 6 rounds, 90 % needs 5: with fewer, even the whole range covers less)
    high: float
    p: float  # two-sided exact signed-rank p (1.0 when every ratio is exactly 1)

    @property
    def ratio(self) -> float:
        return math.exp(self.estimate)

    @property
    def ratio_low(self) -> float:
        return math.exp(self.low)

    @property
    def ratio_high(self) -> float:
        return math.exp(self.high)


def paired(log_ratios: np.ndarray | list[float], level: float = 0.95) -> Paired:
    """The signed-rank test, Hodges-Lehmann estimate and interval of one metric's per-round log-ratios."""
    d = np.asarray(log_ratios, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n == 0:
        raise ValueError("no round has a value on both sides")
    if n > MAX_EXACT:
        d, n = d[:MAX_EXACT], MAX_EXACT
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2.0)
    estimate = float(np.median(walsh))
    low, high = _interval(walsh, n, level)
    return Paired(n, estimate, low, high, _p_value(d))


def _interval(walsh: np.ndarray, n: int, level: float) -> tuple[float, float]:
    """[W_(k), W_(M-k+1)], k the largest count with P(T+ < k) <= (1 - level) / 2 (Hollander & Wolfe)."""
    cdf = signed_rank_cdf(n)
    alpha = (1.0 - level) / 2.0
    k = int(np.searchsorted(cdf, alpha, side="right"))  # P(T+ <= k-1) <= alpha < P(T+ <= k)
    if k < 1:  # too few rounds for this level: no interval says anything
        return -math.inf, math.inf
    return float(walsh[k - 1]), float(walsh[len(walsh) - k])


def _p_value(d: np.ndarray) -> float:
    """Two-sided exact p of T+ (zeros dropped, as Wilcoxon's test does; ties share ranks)."""
    nonzero = d[d != 0.0]
    m = len(nonzero)
    if m == 0:
        return 1.0
    ranks = _ranks(np.abs(nonzero))
    t_plus = float(ranks[nonzero > 0].sum())
    cdf = signed_rank_cdf(m)
    total = m * (m + 1) / 2.0
    lower = cdf[min(math.floor(t_plus + 1e-9), len(cdf) - 1)]  # P(T+ <= t)
    upper_index = math.ceil(total - t_plus - 1e-9)  # P(T+ >= t) = P(T+ <= total - t)
    upper = cdf[min(upper_index, len(cdf) - 1)]
    return float(min(1.0, 2.0 * min(lower, upper)))
