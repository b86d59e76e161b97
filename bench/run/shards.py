"""Shards: which cells of a plan one host runs, decided from each cell's id alone.

Hosts splitting a matrix never talk to each other, so a cell's shard must be a pure function of its
`cell_id`; shard runs are joined afterwards by `merge` (bench.run.store).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from bench.errors import StoreError
from bench.run.records import check_cell_id

__all__ = ["parse_shard", "select_shard"]

_SHARD = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*")
_HEX = re.compile(r"[0-9a-fA-F]+")


def parse_shard(shard: str | tuple[int, int]) -> tuple[int, int]:
    """`"I/N"` or `(I, N)` with 1 <= I <= N, as (I, N)."""
    if isinstance(shard, tuple) and len(shard) == 2 and all(type(part) is int for part in shard):
        index, count = shard
    else:
        match = _SHARD.fullmatch(shard) if isinstance(shard, str) else None
        if match is None:
            raise StoreError(f"--shard must look like I/N with 1 <= I <= N, got {str(shard)!r}.")
        index, count = int(match[1]), int(match[2])
    if not 1 <= index <= count:
        raise StoreError(f"--shard must look like I/N with 1 <= I <= N, got '{index}/{count}'.")
    return index, count


def _cell_id_of(cell: Any) -> str:
    cell_id = cell["cell_id"] if isinstance(cell, Mapping) else cell.cell_id
    return check_cell_id(cell_id)


def _shard_of(cell_id: str, count: int) -> int:
    """1-based shard of a cell: a pure function of its id, so every host agrees without talking."""
    if not _HEX.fullmatch(cell_id[:12]):
        raise StoreError(f"cell_id {cell_id!r} is not a hex string, so it cannot be assigned to a shard.")
    return int(cell_id[:12], 16) % count + 1


def select_shard(cells: Iterable[Any], shard: str | tuple[int, int]) -> list[Any]:
    """The cells of shard I of N: disjoint across I, together all cells, in their original order."""
    index, count = parse_shard(shard)
    return [cell for cell in cells if _shard_of(_cell_id_of(cell), count) == index]
