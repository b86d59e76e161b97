"""The paired statistics `ab` judges with: the exact Wilcoxon signed-rank test and its Hodges-Lehmann
estimate and interval, over one metric's per-round log-ratios new/base.

A round measures both sides back to back, so the machine's slow stretches fall on both and cancel in the
round's ratio; what is left varies from round to round, and the test asks whether the ratios sit on one side
of 1 more often and further than chance would put them. The signed-rank test needs no normality and shrugs
off the odd round a noise burst hit on one side only. Its null distribution is exact up to MAX_EXACT values
(a cell's rounds always are: the count of rank subsets is a small table); beyond, for a metric pooled over
many cells' rounds, the normal approximation with a continuity correction, accurate at that size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["MAX_EXACT", "Paired", "null_cdf", "paired", "signed_rank_cdf"]

MAX_EXACT = 64  # the exact table's reach (it grows as n^3); beyond it the normal approximation


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
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2.0)
    estimate = float(np.median(walsh))
    low, high = _interval(walsh, n, level)
    return Paired(n, estimate, low, high, _p_value(d))


def null_cdf(n: int, t: float) -> float:
    """P(T+ <= t) under the null for n nonzero values: exact up to MAX_EXACT, else normal."""
    if n <= MAX_EXACT:
        cdf = signed_rank_cdf(n)
        return float(cdf[min(max(math.floor(t + 1e-9), -1), len(cdf) - 1)]) if t >= 0 else 0.0
    mean, sd = n * (n + 1) / 4.0, math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
    return 0.5 * math.erfc(-(math.floor(t + 1e-9) + 0.5 - mean) / (sd * math.sqrt(2.0)))


def _interval(walsh: np.ndarray, n: int, level: float) -> tuple[float, float]:
    """[W_(k), W_(M-k+1)], k the largest count with P(T+ < k) <= (1 - level) / 2 (Hollander & Wolfe)."""
    alpha = (1.0 - level) / 2.0
    if n <= MAX_EXACT:
        k = int(np.searchsorted(signed_rank_cdf(n), alpha, side="right"))  # P(T+ <= k-1) <= alpha
    else:
        mean, sd = n * (n + 1) / 4.0, math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
        k = max(0, math.floor(mean - _z(alpha) * sd - 0.5) + 1)
        while k > 0 and null_cdf(n, k - 1) > alpha:
            k -= 1
    if k < 1:  # too few rounds for this level: no interval says anything
        return -math.inf, math.inf
    return float(walsh[k - 1]), float(walsh[len(walsh) - k])


def _z(tail: float) -> float:
    """The standard normal quantile with `tail` above it (bisection on erfc: no scipy)."""
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if 0.5 * math.erfc(mid / math.sqrt(2.0)) > tail:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def _p_value(d: np.ndarray) -> float:
    """Two-sided exact p of T+ (zeros dropped, as Wilcoxon's test does; ties share ranks)."""
    nonzero = d[d != 0.0]
    m = len(nonzero)
    if m == 0:
        return 1.0
    ranks = _ranks(np.abs(nonzero))
    t_plus = float(ranks[nonzero > 0].sum())
    total = m * (m + 1) / 2.0
    lower = null_cdf(m, t_plus)  # P(T+ <= t)
    upper = null_cdf(m, math.ceil(total - t_plus - 1e-9))  # P(T+ >= t) = P(T+ <= total - t)
    return float(min(1.0, 2.0 * min(lower, upper)))
