"""What the warm template imports before any cell forks from it: torch, transformers, peft and
bitsandbytes, and never a CUDA context (a forked child cannot use CUDA its parent initialised).

bitsandbytes asks torch for each GPU's compute capability at import time, which initialises CUDA. On a
GPU host the template therefore imports it with `torch.cuda.get_device_capability` answered from NVML
(which creates no context); bitsandbytes only uses the answer to pick its native library. The runner
checks afterwards that a forked child is not in a "bad fork" and falls back to cold processes if it is.
peft imports bitsandbytes as well, so it is imported only after that.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

# What the libraries print while they import (bitsandbytes: "Failed to load CPU gemm_4bit_forward from
# kernels-community ..."; deprecation warnings) goes to the run's logs/template.log, not the user's terminal:
# the forkserver otherwise shares the terminal. Cells redirect their own output to their logs.
TEMPLATE_LOG_ENV = "LOADBENCH_TEMPLATE_LOG"  # set by bench.run.node.start_template
if os.environ.get(TEMPLATE_LOG_ENV):
    _fd = os.open(os.environ[TEMPLATE_LOG_ENV], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(_fd, 1)
    os.dup2(_fd, 2)
    os.close(_fd)

import torch  # noqa: E402
import tqdm  # noqa: E402
import transformers  # noqa: E402,F401

# tqdm's default lock holds a multiprocessing semaphore, registered with the resource tracker by every cell
# that shows a progress bar (from_pretrained does); a cell killed on timeout or Ctrl-C then "leaks" it and the
# tracker warns at exit. Cells are single processes: a thread lock is all tqdm needs there.
tqdm.tqdm.set_lock(threading.RLock())


def _nvml_capabilities() -> list[tuple[int, int]]:
    import pynvml

    pynvml.nvmlInit()
    try:
        count = pynvml.nvmlDeviceGetCount()
        return [
            tuple(pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(count)
        ]
    finally:
        pynvml.nvmlShutdown()


@contextlib.contextmanager
def capability_from_nvml() -> Iterator[None]:
    """Answer torch.cuda.get_device_capability from NVML while bitsandbytes imports."""
    highest = max(_nvml_capabilities())
    original = torch.cuda.get_device_capability
    torch.cuda.get_device_capability = lambda device=None: highest  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.get_device_capability = original


def import_bitsandbytes() -> None:
    if torch.cuda.is_available() and not torch.cuda.is_initialized():
        try:
            with capability_from_nvml():
                import bitsandbytes
            return
        except Exception:  # no pynvml / NVML error: import plainly; the runner's fork check decides
            pass
    import bitsandbytes  # noqa: F401


import_bitsandbytes()

# After bitsandbytes: peft imports it too, and must find it already imported under the patch.
import peft  # noqa: E402,F401


def preload_model_code() -> None:
    """Import what every cell would otherwise import on first use (model classes, tokenizer backends,
    safetensors): cells start faster, and a cell's RSS growth is its own tensors, not shared code."""
    import importlib

    for name in (
        "safetensors.torch",
        "transformers.models.llama.modeling_llama",
        "transformers.models.qwen2.modeling_qwen2",
        "transformers.tokenization_utils_fast",
        "transformers.generation.utils",
        "peft.tuners.lora",
    ):
        with contextlib.suppress(ImportError):  # another transformers layout: the cell imports it itself
            importlib.import_module(name)


preload_model_code()
