"""The warm template for runs with quantized cells: the base template (bench.run.template.base: torch,
transformers, the cell body) plus bitsandbytes and peft, and never a CUDA context (a forked child cannot
use CUDA its parent initialised). Runs without quantized cells use the base template alone: importing
bitsandbytes and peft there is seconds of start-up no cell of theirs needs.

bitsandbytes asks torch for each GPU's compute capability at import time, which initialises CUDA. On a
GPU host the template therefore imports it with `torch.cuda.get_device_capability` answered from NVML
(which creates no context); bitsandbytes only uses the answer to pick its native library. The runner
checks afterwards that a forked child is not in a "bad fork" and falls back to cold processes if it is.
peft imports bitsandbytes as well, so it is imported only after that.
"""

from __future__ import annotations

# isort: off
import bench.run.template.quiet  # first: quiet output and a thread-safe tqdm

# isort: on
import contextlib
from collections.abc import Iterator

import torch
import transformers  # noqa: F401


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
import peft  # noqa: E402

with contextlib.suppress(ImportError):  # another peft layout: a cell imports it itself
    import peft.tuners.lora  # noqa: F401

# Last, as before the split: model code and the cell body, after bitsandbytes is imported under the patch.
import bench.run.template.base  # noqa: E402,F401
