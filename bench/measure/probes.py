"""Timers and memory probes used inside a cell's process.

Timing: perf_counter on the CPU; on CUDA the device is synchronised before each clock read, so a
sample covers the kernels it launched. Repeats adapt: sample until the relative IQR is small enough
or the time budget is spent, never fewer than `min_n`. Warm-ups are never counted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOISY_REL_IQR = 0.10


@dataclass
class Stats:
    """Summary of repeated samples of one metric (seconds, or whatever the samples are in)."""

    samples: list[float]
    window: tuple[float, float] | None = None  # time.monotonic() at the first and after the last sample

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

    def map(self, fn: Callable[[float], float]) -> Stats:
        """Per-sample transform (e.g. latency -> tokens/s), so each derived sample pairs with its own time."""
        return Stats([fn(s) for s in self.samples])

    def columns(self, name: str) -> dict[str, Any]:
        """Flat record columns: the median under `name`, spread and samples beside it."""
        return {
            name: self.median,
            f"{name}.p10": self.quantile(0.10),
            f"{name}.p90": self.quantile(0.90),
            f"{name}.iqr": self.iqr,
            f"{name}.n": self.n,
            f"{name}.noisy": self.n > 1 and self.rel_iqr > NOISY_REL_IQR,
            f"{name}.samples": list(self.samples),
        }


@dataclass
class Budget:
    """How long to keep sampling one metric."""

    min_n: int = 5
    max_n: int = 50
    seconds: float = 2.0
    target_rel_iqr: float = 0.05
    warmup: int = 1


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for queued device work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def measure(fn: Callable[[], Any], budget: Budget, sync: Callable[[], None] = lambda: None) -> Stats:
    """Time `fn` repeatedly: warm-ups first (not counted), then until the spread settles or time is up."""
    for _ in range(budget.warmup):
        fn()
    sync()
    samples: list[float] = []
    deadline = time.perf_counter() + budget.seconds
    window_start = time.monotonic()
    while len(samples) < budget.max_n:
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
        if len(samples) >= budget.min_n:
            stats = Stats(samples)
            if stats.rel_iqr <= budget.target_rel_iqr or time.perf_counter() >= deadline:
                break
    return Stats(samples, window=(window_start, time.monotonic()))


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
