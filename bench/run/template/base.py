"""What every warm template imports before a cell forks from it: torch, transformers, the model code
and the cell body itself (bench.measure.cell), never a CUDA context. A cell then starts with nothing
left to import, and its RSS growth is its own tensors, not shared code.

Quantized cells need bitsandbytes and peft as well: bench.run.template.kbit adds them (under its CUDA
capability patch) for runs that have such cells.
"""

from __future__ import annotations

# isort: off
import bench.run.template.quiet  # noqa: F401  (first: quiet output and a thread-safe tqdm)

# isort: on
import contextlib
import importlib

import torch  # noqa: F401
import transformers  # noqa: F401


def preload_model_code() -> None:
    """Import what every cell would otherwise import on first use (model classes, tokenizer backends,
    safetensors, the cell body and its workloads)."""
    for name in (
        "safetensors.torch",
        "transformers.models.llama.modeling_llama",
        "transformers.models.qwen2.modeling_qwen2",
        "transformers.tokenization_utils_fast",
        "transformers.generation.utils",
        "transformers.models.auto.tokenization_auto",  # get_tokenizer's first call
        "transformers.models.encoder_decoder.configuration_encoder_decoder",  # AutoConfig's first lookup
        "torch.profiler",  # the sdpa kernel probes
        "bench.measure.cell",
        "bench.measure.findmax",  # the worker entry imports it for every cell
    ):
        with contextlib.suppress(ImportError):  # another transformers layout: the cell imports it itself
            importlib.import_module(name)


preload_model_code()
