"""Human units for tables: GiB, ms, tok/s. Missing values print as '-', never as 0."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.errors import SpecError


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
    """'24GiB', '16GB', '80G', '512MiB' -> bytes (G alone means GiB, as GPU memory is quoted).

    A bare number is refused: `--vram 24` meant 24 GiB to its writer and 24 bytes to a parser."""
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if match and not match.group(2):
        raise SpecError(f"{field}={text!r} has no unit; add a unit, e.g. {match.group(1)}GiB.")
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise SpecError(f"{field}={text!r} is not a size; write it like 24GiB, 16GB, 80G or 512MiB.")
    scale = 1 << 30 if unit == "g" else 1 << 40 if unit == "t" else _SIZE_UNITS[unit]
    value = int(float(match.group(1)) * scale)
    if value <= 0:
        raise SpecError(f"{field}={text!r} must be larger than zero.")
    return value


# -- values at the edge: one validator per kind of value, each refusing with one sentence naming the field --


def _number(text: Any, field: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SpecError(f"{field}={text!r} is not a number; {what}.") from None
    if not math.isfinite(value):
        raise SpecError(f"{field}={text!r} is not finite; {what}.")
    return value


def positive_seconds(text: Any, field: str = "seconds") -> float:
    """A finite duration above zero: `--timeout 0` must not silently mean the default, nor `nan` no limit."""
    what = "give a number of seconds above 0, e.g. 120"
    value = _number(text, field, what)
    if value <= 0:
        raise SpecError(f"{field}={text!r} must be above 0; {what}.")
    return value


def positive_int(text: Any, field: str = "count", minimum: int = 1) -> int:
    """A whole number of at least `minimum` (counts, shapes, threads); '2.5', 'two' and True are refused."""
    what = f"give a whole number of at least {minimum}"
    if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
        raise SpecError(f"{field}={text!r} is not a whole number; {what}.")
    try:
        value = int(text.strip()) if isinstance(text, str) else int(text)
    except (TypeError, ValueError, OverflowError):
        raise SpecError(f"{field}={text!r} is not a whole number; {what}.") from None
    if value < minimum:
        raise SpecError(f"{field}={text!r} is below {minimum}; {what}.")
    return value


def shard(text: str, field: str = "--shard") -> str:
    """'I/N' with 1 <= I <= N, normalised; refused at the command line, before anything is probed."""
    import re

    match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", str(text))
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        raise SpecError(f"{field}={text!r} must look like I/N with 1 <= I <= N, e.g. 1/4.")
    return f"{int(match[1])}/{int(match[2])}"


def argtype(validator: Callable[[Any, str], Any], flag: str) -> Callable[[str], Any]:
    """An argparse `type=` from a validator: its sentence becomes argparse's error (usage, exit 2)."""
    import argparse

    def convert(text: str) -> Any:
        try:
            return validator(text, flag)
        except SpecError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag}=")) from None

    convert.__name__ = getattr(validator, "__name__", "value")  # argparse names the type in its messages
    return convert
