"""Can this host run a config? One sentence when it cannot, checked before transformers is called."""

from __future__ import annotations

from loader.attention import attention_unsupported_reason
from loader.config import LoadConfig
from loader.host import HostCapabilities
from loader.quantization import quantization_unsupported_reason


def unsupported_reason(
    config: LoadConfig, caps: HostCapabilities, *, training: bool = False, dtype: str | None = None
) -> str | None:
    """Why `config` cannot run on the host `caps` describes, or None.

    `dtype` is the resolved model dtype (pass it when "auto" cannot be resolved without reading the
    checkpoint); `training` covers workloads that need a backward pass.
    """
    dtype = dtype or config.resolved_dtype
    if config.device.startswith("cuda") and not caps.cuda:
        return f"device={config.device!r} needs a CUDA GPU; this host has none."
    if dtype == "bfloat16" and caps.cuda and not caps.gpus[0].bf16:
        return f"dtype='bfloat16' needs a GPU of compute capability 8.0+; {caps.gpus[0].name} has no bf16."
    return quantization_unsupported_reason(config.quantization, caps, dtype) or attention_unsupported_reason(
        config.attn_implementation,
        dtype,
        caps,
        training=training or config.gradient_checkpointing,
        sdpa_backend=config.sdpa_backend,
    )
