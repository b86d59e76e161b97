"""The warm template's addition for runs with cells of the on-the-fly quantizers (torchao, HQQ, quanto,
FineGrainedFP8): their libraries and transformers' quantizer and integration modules, imported once
here so that no cell pays for them inside its timeout or its load time (torchao alone takes seconds).

Imported after bench.run.template.kbit (bitsandbytes, peft, the cell body). A library that is not installed
is left out: its cells are skipped by the plan. torchao asks for the GPU's compute capability while it
imports, so it imports under the same NVML answer as bitsandbytes (no CUDA context in the template).
"""

from __future__ import annotations

import contextlib
import importlib

import torch

from bench.run.template.kbit import capability_from_nvml
from loader.quantization import METHODS

_QUANTIZER_MODULES = (
    "transformers.quantizers.auto",
    "transformers.quantizers.quantizer_torchao",
    "transformers.quantizers.quantizer_hqq",
    "transformers.quantizers.quantizer_quanto",
    "transformers.quantizers.quantizer_finegrained_fp8",
    "transformers.integrations.torchao",
    "transformers.integrations.quanto",
    "transformers.integrations.finegrained_fp8",
)


def import_quantizers() -> None:
    """Import every installed quantization library and transformers' modules for it."""
    patch: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if torch.cuda.is_available() and not torch.cuda.is_initialized():
        with contextlib.suppress(Exception):  # no pynvml: import plainly; the runner's fork check decides
            patch = capability_from_nvml()
    with patch:
        for name in (*sorted({m.module for m in METHODS.values()}), *_QUANTIZER_MODULES):
            with contextlib.suppress(ImportError):
                importlib.import_module(name)


import_quantizers()
