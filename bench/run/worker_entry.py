"""The function a worker process starts in: redirect output to the task's log, run the task, answer.

Kept apart from bench.measure so the parent can name the target without importing torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from pathlib import Path
from typing import Any

from bench.run.faults import inject
from bench.run.messages import (
    CalibrationTask,
    CellTask,
    DriftTask,
    Finished,
    ProbeAnswer,
    Ready,
    ReferenceTask,
    Task,
)

_PR_SET_PDEATHSIG = 1


def main(task: Task, conn: Any) -> None:
    log_fd = os.open(task.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    if task.visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = task.visible_devices
    if isinstance(task, CellTask):
        run_cell_task(task, conn)
        return
    if isinstance(task, CalibrationTask):
        from bench.measure.calibrate import calibrate

        conn.send(ProbeAnswer(calibrate()))
    elif isinstance(task, DriftTask):
        from bench.measure.calibrate import drift_probe

        conn.send(ProbeAnswer(drift_probe()))
    elif isinstance(task, ReferenceTask):
        from bench.measure.quality import reference_task

        conn.send(ProbeAnswer(reference_task(task.as_mapping())))
    conn.close()


def _detach() -> None:
    """Own process group (so a timeout kills every descendant) and die with the template process."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run_cell_task(task: CellTask, conn: Any) -> None:
    """Run one cell and send its events, then its outcome; every failure becomes an outcome."""
    _detach()
    conn.send(Ready(time.monotonic()))
    from bench.measure.cell import classify, run_cell
    from bench.measure.findmax import run_find_max
    from bench.measure.outcome import CellOutcome

    try:
        inject(task.fault)
        # --find-max: a search of probes, each in its own process (bench.measure.findmax)
        body = run_find_max if task.cell.find_max else run_cell
        metrics = body(
            task.cell,
            Path(task.checkpoint),
            task.budget,
            conn.send,
            task.quality_ref,
            task.quality_reason,
            bitsandbytes=task.bitsandbytes,
            kernels_reason=task.kernels_reason,
        )
        conn.send(Finished(CellOutcome("ok", metrics=metrics)))
    except BaseException as exc:  # every failure becomes a record; the runner goes on
        conn.send(Finished(classify(exc)))
    finally:
        conn.close()
