"""Human units: sizes in, readable numbers out; a missing value is '-', never 0."""

from __future__ import annotations

import pytest

from bench.units import fmt_bytes, fmt_rate, fmt_seconds, parse_size
from loader import LoadConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 << 30),
        ("16GB", 16 * 10**9),
        ("80G", 80 << 30),
        ("512MiB", 512 << 20),
        ("1.5GiB", 3 << 29),
    ],
)
def test_parse_size(text, expected) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "24 parsecs", "-1GiB", "0GiB", ""])
def test_parse_size_refuses_with_one_sentence(text) -> None:
    with pytest.raises(LoadConfigError, match=r"--vram-limit=.* (is not a size|must be larger than zero)"):
        parse_size(text, "--vram-limit")


def test_missing_values_are_dashes_not_zero() -> None:
    assert fmt_bytes(None) == fmt_seconds(None) == fmt_rate(None) == "-"
    assert (
        fmt_bytes(3 << 30) == "3.00 GiB"
        and fmt_seconds(0.0123) == "12.3 ms"
        and fmt_rate(25_000) == "25.0k tok/s"
    )
