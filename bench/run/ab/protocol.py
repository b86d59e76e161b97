"""The parent <-> side protocol, once: JSON lines, so sides running other loadbench versions still talk.

The parent writes one request a line to the side's stdin; the side answers one JSON line on the file
descriptor it was given (its stdout and stderr belong to the side's log, where libraries may print).
Requests: `start` (the spec and run settings; answered `ready` or `failed`), `run` (one cell of one round,
and whether it is the first, when the untimed read-backs run; answered `record`), and end of input (the side
stops its template and exits).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MODULE", "PROTOCOL", "decode", "encode"]

PROTOCOL = 1  # bumped when a request or an answer changes shape; sides of another protocol are refused
MODULE = "bench.run.ab.side"  # what a side's interpreter runs: `python -m bench.run.ab.side FD`


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line (no NaN: a record's missing metric is null)."""
    return (json.dumps(message, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")


def decode(line: bytes) -> dict[str, Any]:
    """A line back into its message; a line that is not one JSON object is a ValueError."""
    value = json.loads(line)
    if not isinstance(value, dict) or "op" not in value:
        raise ValueError(f"not a loadbench ab message: {line[:200]!r}")
    return value
