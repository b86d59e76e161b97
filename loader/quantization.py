"""Quantization: the knob's values, what each needs from the host, and its transformers config.

The values: none, bitsandbytes (bnb-8bit, bnb-4bit) and the on-the-fly quantizers of transformers 5
(torchao, HQQ, quanto, FineGrainedFP8), each declared once in loader.quant_methods. Here: whether this
host can run a value (one sentence with the fix), whether peft can train LoRA on it, and
`quantization_config`, what from_pretrained gets as `quantization_config`.

LoadConfig validates its knobs against QUANTIZATION and QUANT_TYPES, so this module does not import it:
the builders take anything with the quantization knobs (`QuantKnobs`), which keeps loader.config free of
an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from loader.dtypes import to_torch
from loader.host import HostCapabilities
from loader.quant_methods import METHODS, QUANT_EXTRA, QuantMethod

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig

__all__ = [
    "METHODS",
    "QUANTIZATION",
    "QUANT_EXTRA",
    "QUANT_TYPES",
    "QuantKnobs",
    "QuantMethod",
    "bnb_config",
    "lora_unsupported_reason",
    "quantization_config",
    "quantization_unsupported_reason",
]

QUANT_TYPES = ("nf4", "fp4")


QUANTIZATION = ("none", "bnb-8bit", "bnb-4bit", *METHODS)


class QuantKnobs(Protocol):
    """The knobs of a LoadConfig that decide its quantization config (read-only)."""

    @property
    def quantization(self) -> str: ...
    @property
    def bnb_4bit_quant_type(self) -> str: ...
    @property
    def bnb_4bit_use_double_quant(self) -> bool: ...
    @property
    def bnb_4bit_quant_storage(self) -> str: ...
    @property
    def bnb_4bit_compute_dtype(self) -> str | None: ...
    @property
    def compute_dtype(self) -> str: ...


def quantization_unsupported_reason(
    quantization: str, caps: HostCapabilities, dtype: str | None = None
) -> str | None:
    """One sentence saying why this host cannot quantize so (with the fix), or None if it can.

    `dtype` is the resolved model dtype (None: not judged)."""
    if quantization == "none":
        return None
    method = METHODS.get(quantization)
    if method is None:
        return _bnb_reason(quantization, caps)
    if method.library and method.library not in dict(caps.quant_libraries):
        return (
            f"quantization={quantization!r} needs {method.library}, which is not installed here; "
            f"install loadbench's quant extra: {QUANT_EXTRA}."
        )
    if method.min_cc is not None:
        need = f"a CUDA GPU of compute capability {method.min_cc[0]}.{method.min_cc[1]}+ ({method.cc_why})"
        if not caps.cuda:
            return f"quantization={quantization!r} needs {need}; this host has none."
        gpu = caps.gpus[0]
        if gpu.compute_capability < method.min_cc:
            cc = ".".join(map(str, gpu.compute_capability))
            return f"quantization={quantization!r} needs {need}; {gpu.name} has {cc}."
    if method.dtypes and dtype is not None and dtype not in method.dtypes:
        return (
            f"quantization={quantization!r} needs dtype {' or '.join(method.dtypes)} ({method.dtype_why}); "
            f"this cell has {dtype}."
        )
    return None


def _bnb_reason(quantization: str, caps: HostCapabilities) -> str | None:
    if caps.bitsandbytes_version is None:
        why = f" ({caps.bitsandbytes_error})" if caps.bitsandbytes_error else ""
        return f"quantization={quantization!r} needs bitsandbytes, which cannot be imported here{why}."
    if caps.device_type not in caps.bitsandbytes_devices:
        return (
            f"quantization={quantization!r}: bitsandbytes {caps.bitsandbytes_version} has no working "
            f"{caps.device_type} backend on this host (it supports: {', '.join(caps.bitsandbytes_devices) or 'none'})."
        )
    return None


def lora_unsupported_reason(quantization: str) -> str | None:
    """Why peft cannot train LoRA adapters on weights quantized so, or None (bitsandbytes: it can)."""
    method = METHODS.get(quantization)
    if method is None or method.lora is None:
        return None
    return f"quantization={quantization!r} cannot train LoRA adapters: {method.lora}."


def _compute_dtype(config: QuantKnobs, model_dtype: str | None) -> str:
    if config.bnb_4bit_compute_dtype in (None, "auto") and model_dtype is not None and model_dtype != "auto":
        return model_dtype
    return config.compute_dtype


def bnb_config(config: QuantKnobs, model_dtype: str | None = None) -> BitsAndBytesConfig | None:
    """The BitsAndBytesConfig transformers 5 expects (load_in_* keyword arguments are gone).

    The 4-bit compute dtype defaults to the model dtype (`model_dtype`, resolved, when known).
    """
    if config.quantization not in ("bnb-8bit", "bnb-4bit"):
        return None
    from transformers import BitsAndBytesConfig

    if config.quantization == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=config.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=to_torch(_compute_dtype(config, model_dtype)),
        bnb_4bit_quant_storage=to_torch(config.bnb_4bit_quant_storage),
    )


def quantization_config(config: QuantKnobs, model_dtype: str | None = None) -> Any:
    """What from_pretrained gets as `quantization_config` for the config's quantization (None: none)."""
    if config.quantization not in METHODS:
        return bnb_config(config, model_dtype)
    name = config.quantization
    method = METHODS[name]
    if name.startswith("torchao-"):
        import torchao.quantization as ao
        from transformers import TorchAoConfig

        if name == "torchao-int8":
            return TorchAoConfig(ao.Int8WeightOnlyConfig())
        if name == "torchao-int4":
            return TorchAoConfig(
                ao.Int4WeightOnlyConfig(
                    group_size=method.group,
                    int4_packing_format="tile_packed_to_4d",
                    int4_choose_qparams_algorithm="hqq",
                )
            )
        return TorchAoConfig(ao.Float8DynamicActivationFloat8WeightConfig())
    if name.startswith("hqq-"):
        from transformers import HqqConfig

        return HqqConfig(nbits=method.bits, group_size=method.group)
    if name.startswith("quanto-"):
        from transformers import QuantoConfig

        return QuantoConfig(weights=f"int{method.bits}")
    from transformers import FineGrainedFP8Config

    return FineGrainedFP8Config()
