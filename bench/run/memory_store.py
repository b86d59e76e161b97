"""What a Runner needs of a store, kept in memory: for a process that runs cells while another process owns
the run directory (a Ray node's task; an `ab` side, whose parent writes the one store)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["MemoryStore"]


class MemoryStore:
    """Records and run-level facts held in memory; claims always succeed (the owner holds the leases)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.records: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}

    def append(self, record: dict[str, Any]) -> bool:
        self.records.append(record)
        return True

    def set_meta(self, key: str, value: Any) -> None:
        self.meta[key] = value

    def claim(self, cell_id: str, lease_s: float = 0.0) -> bool:
        return True

    def refresh(self, cell_ids: Iterable[str], lease_s: float = 0.0) -> None:
        pass

    def release(self, cell_id: str) -> None:
        pass

    def final_cell_ids(self) -> set[str]:
        return set()
