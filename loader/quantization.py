"""LoadConfig -> transformers BitsAndBytesConfig (or None), and whether bitsandbytes can run here.

LoadConfig validates its knobs against QUANTIZATION and QUANT_TYPES, so this module does not import it:
`bnb_config` takes anything with the quantization knobs (`QuantKnobs`), which keeps loader.config free of
an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from loader.dtypes import to_torch
from loader.host import HostCapabilities

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig

__all__ = ["QUANTIZATION", "QUANT_TYPES", "QuantKnobs", "bnb_config", "quantization_unsupported_reason"]

QUANTIZATION = ("none", "bnb-8bit", "bnb-4bit")
QUANT_TYPES = ("nf4", "fp4")


class QuantKnobs(Protocol):
    """The knobs of a LoadConfig that decide its BitsAndBytesConfig (read-only)."""

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


def quantization_unsupported_reason(quantization: str, caps: HostCapabilities) -> str | None:
    """One sentence saying why bitsandbytes cannot quantize on this host, or None if it can."""
    if quantization == "none":
        return None
    if caps.bitsandbytes_version is None:
        why = f" ({caps.bitsandbytes_error})" if caps.bitsandbytes_error else ""
        return f"quantization={quantization!r} needs bitsandbytes, which cannot be imported here{why}."
    if caps.device_type not in caps.bitsandbytes_devices:
        return (
            f"quantization={quantization!r}: bitsandbytes {caps.bitsandbytes_version} has no working "
            f"{caps.device_type} backend on this host (it supports: {', '.join(caps.bitsandbytes_devices) or 'none'})."
        )
    return None


def _compute_dtype(config: QuantKnobs, model_dtype: str | None) -> str:
    if config.bnb_4bit_compute_dtype in (None, "auto") and model_dtype is not None and model_dtype != "auto":
        return model_dtype
    return config.compute_dtype


def bnb_config(config: QuantKnobs, model_dtype: str | None = None) -> BitsAndBytesConfig | None:
    """The BitsAndBytesConfig transformers 5 expects (load_in_* keyword arguments are gone).

    The 4-bit compute dtype defaults to the model dtype (`model_dtype`, resolved, when known).
    """
    if config.quantization == "none":
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
