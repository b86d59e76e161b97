"""Timers and memory probes used inside a cell's process.

Timing: perf_counter on the CPU; on CUDA the device is synchronised before each clock read, so a
sample covers the kernels it launched. Warm-ups are never counted.

The stop rule must not trust a lull: five samples that happen to agree during a quiet moment of a shared
machine say nothing about the next minute. So samples are taken in blocks (at least `Budget.blocks`, each
of at least `min_seconds / blocks` and a share of `min_n`), and sampling stops only when the 95 % interval
of the median (order statistics: distribution-free) is within ±`target_rel_ci` of it AND the blocks'
medians agree within `target_rel_ci` of it. Otherwise it goes on until the time budget or the sample cap, and the record says which
(`<metric>.stop`, bench.schema.STOP_REASONS) beside the interval itself (`.ci_low`, `.ci_high`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.schema import CI_LEVEL, MIN_SAMPLES

NOISY_REL_IQR = 0.10


@lru_cache(maxsize=512)
def median_ci_ranks(n: int, level: float = CI_LEVEL) -> tuple[int, int]:
    """0-based ranks (lo, hi) of the sorted samples bounding the median's `level` interval.

    The interval [x_(k), x_(n-k+1)] covers the median with probability 1 - 2 P(Binomial(n, 1/2) < k);
    k is the largest rank that keeps that at or above `level`. Below n = 6 no rank reaches 95 %, so the
    interval is the whole range (its coverage then is only 1 - 2^(1-n)).
    """
    alpha = (1.0 - level) / 2.0
    k, tail = 0, 0.0  # tail = P(B < k+1) as k grows
    while k < n // 2:
        tail += math.comb(n, k) / 2.0**n
        if tail > alpha:
            break
        k += 1
    k = max(k, 1) - 1  # 0-based rank of x_(k) (x_(1) when no k qualifies)
    return k, n - 1 - k


@dataclass
class Stats:
    """Summary of repeated samples of one metric (seconds, or whatever the samples are in)."""

    samples: list[float]
    window: tuple[float, float] | None = None  # time.monotonic() at the first and after the last sample
    block_ids: list[int] | None = None  # block of each sample (None: one block)
    stop: str | None = None  # bench.schema.STOP_REASONS; None for a summary not made by `measure`

    @property
    def n(self) -> int:
        return len(self.samples)

    def quantile(self, q: float) -> float:
        if self.n == 1:
            return self.samples[0]
        cuts = statistics.quantiles(self.samples, n=100, method="inclusive")
        return cuts[round(q * 100) - 1] if 0 < q < 1 else (min(self.samples) if q <= 0 else max(self.samples))

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        return self.quantile(0.75) - self.quantile(0.25) if self.n > 1 else 0.0

    @property
    def rel_iqr(self) -> float:
        return self.iqr / self.median if self.median else float("inf")

    def ci(self) -> tuple[float, float]:
        """The CI_LEVEL confidence interval of the median, from order statistics."""
        ordered = sorted(self.samples)
        lo, hi = median_ci_ranks(self.n)
        return ordered[lo], ordered[hi]

    def block_medians(self) -> list[float]:
        ids = self.block_ids or [0] * self.n
        by_block: dict[int, list[float]] = {}
        for sample, block in zip(self.samples, ids, strict=True):
            by_block.setdefault(block, []).append(sample)
        return [statistics.median(v) for _, v in sorted(by_block.items())]

    def settled(self, target: float) -> bool:
        """The median's interval lies within ±target of the median, and the blocks' medians agree with
        each other within target of it (a step between blocks of even 2 × target cannot hide in the middle)."""
        mid = self.median
        ci_lo, ci_hi = self.ci()
        blocks = self.block_medians()
        return (
            mid * (1 - target) <= ci_lo
            and ci_hi <= mid * (1 + target)
            and max(blocks) - min(blocks) <= target * abs(mid)
        )

    def map(self, fn: Callable[[float], float]) -> Stats:
        """Per-sample transform (e.g. latency -> tokens/s), so each derived sample pairs with its own time."""
        return Stats([fn(s) for s in self.samples], block_ids=self.block_ids, stop=self.stop)

    def columns(self, name: str) -> dict[str, Any]:
        """Flat record columns: the median under `name`, spread, interval and samples beside it."""
        ci_low, ci_high = self.ci()
        return {
            name: self.median,
            f"{name}.p10": self.quantile(0.10),
            f"{name}.p90": self.quantile(0.90),
            f"{name}.iqr": self.iqr,
            f"{name}.n": self.n,
            f"{name}.noisy": self.n > 1 and self.rel_iqr > NOISY_REL_IQR,
            f"{name}.samples": list(self.samples),
            f"{name}.ci_low": ci_low,
            f"{name}.ci_high": ci_high,
            f"{name}.blocks": len(set(self.block_ids)) if self.block_ids else 1,
            f"{name}.stop": self.stop,
        }


@dataclass
class Budget:
    """How long to keep sampling one metric: at least min_n samples over min_seconds in `blocks` blocks,
    at most max_n samples or `seconds` of sampling (the floor min_n wins over `seconds`)."""

    min_n: int = MIN_SAMPLES
    max_n: int = 50
    seconds: float = 2.0
    target_rel_ci: float = 0.05
    warmup: int = 1
    min_seconds: float = 0.25
    blocks: int = 3


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for queued device work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


class Sampler:
    """Samples of one metric taken block by block, so a caller can spread the blocks over a cell."""

    def __init__(self, budget: Budget, sync: Callable[[], None] = lambda: None) -> None:
        self.budget = budget
        self.sync = sync
        self.samples: list[float] = []
        self.block_ids: list[int] = []
        self.blocks = 0
        self.spent = 0.0  # seconds inside blocks (what min_seconds and the budget count)
        self.stop: str | None = None
        self.window: tuple[float, float] | None = None

    @property
    def done(self) -> bool:
        return self.stop is not None

    def block(self, fn: Callable[[], Any], before: Callable[[], None] | None = None) -> None:
        """One block: at least its share of min_n and of min_seconds; ends early at max_n or the budget.
        `before` runs untimed ahead of each sample (e.g. freeing the previous model)."""
        b = self.budget
        share_n = max(1, math.ceil(b.min_n / max(1, b.blocks)))
        share_s = b.min_seconds / max(1, b.blocks)
        begin = time.perf_counter()
        first = time.monotonic()
        taken = 0
        while not self.done:
            if before is not None:
                pause = time.perf_counter()
                before()
                begin += time.perf_counter() - pause  # untimed work is not sampling time
            start = time.perf_counter()
            fn()
            self.sync()
            now = time.perf_counter()
            self.samples.append(now - start)
            self.block_ids.append(self.blocks)
            taken += 1
            self._check_limits(self.spent + now - begin)
            if taken >= share_n and now - begin >= share_s:
                break
        self.spent += time.perf_counter() - begin
        self.window = (self.window[0] if self.window else first, time.monotonic())
        self.blocks += 1
        # A limit reached at the same sample the interval settled: "settled" is the more useful truth.
        enough = self.blocks >= b.blocks and self.spent >= b.min_seconds and self.n >= b.min_n
        if self.stop != "fixed" and enough and self.stats().settled(b.target_rel_ci):
            self.stop = "settled"

    @property
    def n(self) -> int:
        return len(self.samples)

    def _check_limits(self, spent: float) -> None:
        b = self.budget
        if self.n >= max(b.max_n, b.min_n):
            self.stop = "fixed" if b.min_n >= b.max_n else "max_n"
        elif spent >= b.seconds and self.n >= b.min_n:
            self.stop = "budget"

    def stats(self) -> Stats:
        return Stats(list(self.samples), window=self.window, block_ids=list(self.block_ids), stop=self.stop)


def measure(fn: Callable[[], Any], budget: Budget, sync: Callable[[], None] = lambda: None) -> Stats:
    """Time `fn` repeatedly: warm-ups first (not counted), then block after block until the median's
    interval settles (and the blocks agree), the time budget is spent or max_n is reached."""
    for _ in range(budget.warmup):
        fn()
    sync()
    sampler = Sampler(budget, sync)
    while not sampler.done:
        sampler.block(fn)
    return sampler.stats()


# -- memory ----------------------------------------------------------------------------------------

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int | None:
    """This process's resident set size now (VmRSS), or None where /proc is not readable."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else None


def trim_heap() -> None:
    """Hand the C heap's free memory back to the OS (glibc malloc_trim) so each phase's peak starts from the
    same floor: otherwise what the previous phase freed but glibc kept resident counts, or not, depending on
    how many samples it took, and the same cell's phase peak flips by 5-8 % between runs."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim this way
        pass


def reset_rss_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) so the next phase gets its own peak (Linux 4.0+)."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PhaseMemory:
    """Peak memory of one phase: RSS high-water mark and, on CUDA, the torch allocator's peaks."""

    device: str
    rss_resettable: bool = field(default=False, init=False)

    def start(self) -> None:
        trim_heap()
        self.rss_resettable = reset_rss_peak()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def columns(self, phase: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        hwm = _status_kib("VmHWM")
        key = f"mem.{phase}.rss_bytes"
        out[key] = hwm * 1024 if hwm is not None else None
        if hwm is None:
            out[f"{key}.reason"] = "/proc/self/status is not readable on this OS"
        elif not self.rss_resettable:
            out[f"{key}.reason"] = "peak RSS could not be reset per phase; this is the process peak so far"
        for kind in ("allocated", "reserved"):
            col = f"mem.{phase}.torch_{kind}_bytes"
            if self.device.startswith("cuda"):
                import torch

                out[col] = int(getattr(torch.cuda, f"max_memory_{kind}")())
            else:
                out[col] = None
                out[f"{col}.reason"] = "the torch CUDA allocator exists only on a GPU; see rss_bytes"
        return out
