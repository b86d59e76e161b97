"""Building a plan's random weights at the start of `run`, visibly: the one heavy step `plan` never takes.

A config-only model (a hub id with just config.json cached, or a preset) gets its checkpoint written
here, with a progress bar in bytes on stderr, and cached by the hash of its inputs (its fingerprint),
so the next run starts at once.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.plan.models import ResolvedModel, materialize
from bench.units import fmt_bytes

__all__ = ["materialize_visibly"]


def materialize_visibly(model: ResolvedModel) -> Path:
    """The directory the plan's cells load; random weights are built first, with progress on stderr."""
    if model.built:
        return model.checkpoint
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    console.print(f"building random weights: {model.describe()}")
    started = time.perf_counter()
    written = [0]
    with Progress(
        TextColumn("weights"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("weights", total=None)

        def report(done: int, total: int) -> None:
            written[0] = total
            bar.update(task, completed=done, total=total)

        path = materialize(model, progress=report)
    console.print(
        f"built {fmt_bytes(written[0])} of random weights in {time.perf_counter() - started:.1f} s: {path}"
    )
    return path
