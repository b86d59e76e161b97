"""Cell values as every analysis output reads and prints them, so "missing" means one thing everywhere.

A record says "not measured" with null; pandas says it with NaN or NA. Reports show either as "–" (never 0),
and a flag or a text is never taken for a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench import units

__all__ = [
    "MISSING",
    "escaped",
    "fmt_bytes",
    "fmt_plain",
    "fmt_rate",
    "fmt_rate_bare",
    "fmt_seconds",
    "is_flag",
    "is_missing",
    "knob_text",
    "number",
    "short",
]

MISSING = "–"
LABEL_CHARS = 28


def is_missing(value: Any) -> bool:
    """None, NaN and pandas' NA all mean "not measured"."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")


def is_flag(value: Any) -> bool:
    """numpy booleans are not Python bools but are no measurement either."""
    return getattr(getattr(value, "dtype", None), "kind", None) == "b"


def number(value: Any) -> float | None:
    """A finite float, or None for anything missing or not numeric (a flag or a text is no measurement)."""
    if type(value) is float:  # the common case, first: tables call this for every cell
        return value if math.isfinite(value) else None
    if is_missing(value) or isinstance(value, (bool, str, bytes)) or is_flag(value):
        return None
    try:
        num = float(value)
    except (TypeError, ValueError):
        return None
    return num if math.isfinite(num) else None


def _or_missing(formatter: Callable[[float], str]) -> Callable[[Any], str]:
    """units.* print "-" for None; the report promises "–" for anything missing, NaN included."""

    def fmt(value: Any) -> str:
        num = number(value)
        return MISSING if num is None else formatter(num)

    return fmt


fmt_bytes = _or_missing(units.fmt_bytes)
fmt_seconds = _or_missing(units.fmt_seconds)
fmt_rate = _or_missing(units.fmt_rate)
fmt_plain = _or_missing(lambda value: f"{value:.4g}")
fmt_rate_bare = _or_missing(lambda value: units.fmt_rate(value, "").strip())


def knob_text(name: str, value: Any) -> str:
    """A knob value as a table shows it: checkpointing as on/off, missing as "–"."""
    if is_missing(value):
        return MISSING
    if name == "grad_ckpt" and (isinstance(value, (bool, int)) or is_flag(value)):
        return "on" if value else "off"
    if name == "vram_limit_bytes":
        return fmt_bytes(value) if number(value) is not None else str(value)
    if isinstance(value, float) and value.is_integer():  # a knob column with a null reads back as floats
        return str(int(value))
    return str(value)


def short(text: str, limit: int = LABEL_CHARS) -> str:
    """A label cut to fit a plot, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escaped(texts: list[str], escape: Callable[[str], str]) -> list[str]:
    """Escape each distinct text once: knob columns repeat a handful of values thousands of times."""
    cache = {text: escape(text) for text in set(texts)}
    return [cache[text] for text in texts]
