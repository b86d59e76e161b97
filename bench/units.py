"""Human units for tables: GiB, ms, tok/s. Missing values print as '-', never as 0."""

from __future__ import annotations


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def fmt_rate(value: float | None, unit: str = "tok/s") -> str:
    if value is None:
        return "-"
    if value >= 10_000:
        return f"{value / 1000:.1f}k {unit}"
    return f"{value:.1f} {unit}"
