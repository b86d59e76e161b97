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


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_size(text: str, field: str = "size") -> int:
    """'24GiB', '16GB', '80G', '512MiB' -> bytes (G alone means GiB, as GPU memory is quoted)."""
    import re

    from loader.errors import LoadConfigError

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise LoadConfigError(f"{field}={text!r} is not a size; write it like 24GiB, 16GB, 80G or 512MiB.")
    scale = 1 << 30 if unit == "g" else 1 << 40 if unit == "t" else _SIZE_UNITS[unit]
    value = int(float(match.group(1)) * scale)
    if value <= 0:
        raise LoadConfigError(f"{field}={text!r} must be larger than zero.")
    return value
