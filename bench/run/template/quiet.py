"""What every warm template does first, before any library import: quiet output and a thread-safe tqdm.

What the libraries print while they import (bitsandbytes: "Failed to load CPU gemm_4bit_forward from
kernels-community ..."; deprecation warnings) goes to the template log, not the user's terminal: the
forkserver otherwise shares the terminal. Cells redirect their own output to their logs.
"""

from __future__ import annotations

import os
import threading

TEMPLATE_LOG_ENV = "LOADBENCH_TEMPLATE_LOG"  # bench.run.node.TEMPLATE_LOG_ENV: set by begin_template
if os.environ.get(TEMPLATE_LOG_ENV):
    _fd = os.open(os.environ[TEMPLATE_LOG_ENV], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(_fd, 1)
    os.dup2(_fd, 2)
    os.close(_fd)

import tqdm  # noqa: E402

# tqdm's default lock holds a multiprocessing semaphore, registered with the resource tracker by every cell
# that shows a progress bar (from_pretrained does); a cell killed on timeout or Ctrl-C then "leaks" it and the
# tracker warns at exit. Cells are single processes: a thread lock is all tqdm needs there.
tqdm.tqdm.set_lock(threading.RLock())
