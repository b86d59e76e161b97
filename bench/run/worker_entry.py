"""The function a cell's process starts in: redirect output to the cell's log, then run the task.

Kept apart from bench.measure.cell so the parent can name the target without importing torch.
"""

from __future__ import annotations

import os
from typing import Any


def main(task: dict[str, Any], conn: Any) -> None:
    log_fd = os.open(task["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    if task.get("kind") in ("calibrate", "quality_reference"):
        if task.get("visible_devices") is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = task["visible_devices"]
        if task["kind"] == "calibrate":
            from bench.measure.calibrate import calibrate

            conn.send(calibrate())
        else:
            from bench.measure.quality import reference_task

            conn.send(reference_task(task))
        conn.close()
        return
    from bench.measure.cell import cell_main

    cell_main(task, conn)
