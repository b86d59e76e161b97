"""The order `ab` measures in: rounds over the cells still taking rounds, each cell's two sides back to back.

Within a round the cells come in a seeded random order, so no cell always follows the same one; each cell's
pair alternates which side goes first from round to round, starting from a seeded coin, so an advantage of
going first (a warmer page cache, a cooler core) falls on both sides equally often. The order is a function
of (seed, round) alone: a resumed run measures what is left in the order it would have.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from bench.schema import AB_SIDES

__all__ = ["Slot", "round_slots"]


@dataclass(frozen=True)
class Slot:
    """One measurement of a round: a cell on a side, the `slot`-th of its round."""

    round: int  # 1-based
    slot: int  # 0-based position in the round
    cell_id: str
    side: str  # "base" or "new"
    first: bool  # this side went first in its cell's pair


def _first_side(seed: int, cell_id: str, round_no: int) -> str:
    """Alternating by round, from a seeded coin per cell."""
    coin = random.Random(f"{seed}:{cell_id}").random() < 0.5
    return AB_SIDES[(round_no + coin) % 2]


def round_slots(seed: int, round_no: int, cell_ids: Sequence[str]) -> list[Slot]:
    """The measurements of round `round_no` over `cell_ids`, in order."""
    order = sorted(cell_ids)
    random.Random(f"{seed}:round:{round_no}").shuffle(order)
    slots: list[Slot] = []
    for cell_id in order:
        first = _first_side(seed, cell_id, round_no)
        for side in (first, AB_SIDES[1 - AB_SIDES.index(first)]):
            slots.append(Slot(round_no, len(slots), cell_id, side, side == first))
    return slots
