"""Progress of a run: a live rich display on a terminal, one plain line per cell elsewhere (CI logs)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, Protocol

from bench.plan.matrix import Cell
from bench.schema import FAILED_STATUSES


class Progress(Protocol):
    """What a runner tells its display; the display never changes what runs."""

    def start(self, total: int, already_done: int) -> None: ...
    def cell_started(self, cell: Cell) -> None: ...
    def phase(self, cell: Cell, phase: str) -> None: ...
    def cell_finished(self, cell: Cell, record: dict[str, Any]) -> None: ...
    def stop(self) -> None: ...


def _counts(counter: Counter[str]) -> str:
    """The live and closing summary: ok, skipped, failed and (when any) interrupted cells so far.

    `interrupted` is not a failure: the cell did not finish and --resume runs it again."""
    failed = sum(n for s, n in counter.items() if s in FAILED_STATUSES)
    text = f"ok {counter['ok']} · skipped {counter['skipped']} · failed {failed}"
    return text + (f" · interrupted {counter['interrupted']}" if counter["interrupted"] else "")


class PlainProgress:
    """One line per finished cell, for logs and pipes."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.counter: Counter[str] = Counter()
        self.total = 0
        self.done = 0

    def start(self, total: int, already_done: int) -> None:
        self.total, self.done = total, already_done
        print(f"loadbench: {total} cells ({already_done} already recorded)", file=self.stream, flush=True)

    def cell_started(self, cell: Cell) -> None:
        pass

    def phase(self, cell: Cell, phase: str) -> None:
        pass

    def cell_finished(self, cell: Cell, record: dict[str, Any]) -> None:
        self.done += 1
        self.counter[record["status"]] += 1
        reason = f"  {record['reason']}" if record.get("reason") and record["status"] != "ok" else ""
        wall = f" {record['wall_s']:.1f}s" if record.get("wall_s") is not None else ""
        print(
            f"[{self.done}/{self.total}] {record['status']:<11} {cell.label}{wall}{reason}",
            file=self.stream,
            flush=True,
        )

    def stop(self) -> None:
        print(f"loadbench: {_counts(self.counter)}", file=self.stream, flush=True)


class RichProgress:
    """A bar with cell i/N and ETA, the current cell's knobs and phase, live status counts."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.counter: Counter[str] = Counter()
        self.progress = Progress(
            TextColumn("[bold]cells"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[current]}"),
            TextColumn("[dim]{task.fields[counts]}"),
        )
        self.task: Any = None
        self.started = 0.0

    def start(self, total: int, already_done: int) -> None:
        self.progress.start()
        self.started = time.monotonic()
        self.task = self.progress.add_task("run", total=total, completed=already_done, current="", counts="")

    def cell_started(self, cell: Cell) -> None:
        self.progress.update(self.task, current=f"{cell.label} · starting")

    def phase(self, cell: Cell, phase: str) -> None:
        self.progress.update(self.task, current=f"{cell.label} · {phase}")

    def cell_finished(self, cell: Cell, record: dict[str, Any]) -> None:
        self.counter[record["status"]] += 1
        self.progress.update(self.task, advance=1, counts=_counts(self.counter))

    def stop(self) -> None:
        self.progress.update(self.task, current="done")
        self.progress.stop()


def make_progress(live: bool | None = None) -> Progress:
    """Rich on a terminal, plain lines otherwise (so CI logs stay readable)."""
    live = sys.stdout.isatty() if live is None else live
    return RichProgress() if live else PlainProgress()


class NullProgress:
    """No display: for cells run on a remote node, whose progress the driver shows."""

    def start(self, total: int, already_done: int) -> None:
        pass

    def cell_started(self, cell: Cell) -> None:
        pass

    def phase(self, cell: Cell, phase: str) -> None:
        pass

    def cell_finished(self, cell: Cell, record: dict[str, Any]) -> None:
        pass

    def stop(self) -> None:
        pass
