"""The statistics compare judges with: a vectorised Mann-Whitney U test and Benjamini-Hochberg q-values.

One CI job tests hundreds of metrics at once, so each test is vectorised over every metric with the same
sample sizes, and the family is adjusted with Benjamini-Hochberg: when nothing changed, the chance of any
flag stays at most alpha. The U test is exact when there are no ties and one sample has at most 20 values,
otherwise the normal approximation with tie and continuity correction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["bh_adjust", "mann_whitney_u", "min_p"]

EXACT_MAX_SMALL, EXACT_MAX_LARGE = 20, 50  # exact U distribution when min(n) <= 20 and max(n) <= 50


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


def min_p(m: int, n: int) -> float:
    """The smallest two-sided p a rank test can give for sample sizes m and n (no ties)."""
    return min(1.0, 2.0 / math.comb(m + n, m))
