"""Quantization: the knob's values, what each needs from the host, and its transformers config.

bitsandbytes (bnb-8bit, bnb-4bit) and the on-the-fly quantizers of transformers 5 (torchao, HQQ,
quanto, FineGrainedFP8) are declared here once: `QuantMethod` says which library a value needs, the
GPU it needs, the dtypes it takes, whether peft can train LoRA adapters on it and how it stores a
linear layer (the memory estimate reads that). `quantization_config` builds what from_pretrained
gets as `quantization_config`.

LoadConfig validates its knobs against QUANTIZATION and QUANT_TYPES, so this module does not import it:
the builders take anything with the quantization knobs (`QuantKnobs`), which keeps loader.config free of
an import cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from loader.dtypes import to_torch
from loader.host import HostCapabilities

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
QUANT_EXTRA = "pip install -e '.[quant]'"  # loadbench's optional extra with the quantization libraries


@dataclass(frozen=True)
class QuantMethod:
    """One on-the-fly quantizer of transformers 5, as a value of the quantization knob.

    Storage (`linear_bytes`): `bits` per weight, plus `scale_bytes` per scale group (0: the compute
    dtype's width, twice when `zero_point`); `scales` says what a group is: an output row, `group`
    weights of a row, a `group` × `group` tile, or the whole tensor. A layer whose input width is not a
    multiple of the group stays unquantized when `ragged_unquantized` (torchao's int4 skips it).
    """

    name: str
    library: str  # the distribution that must be installed ("" when transformers has it built in)
    module: str  # what the warm template imports for it
    bits: int
    scales: str = "row"  # row | group | tile | tensor
    group: int = 0
    scale_bytes: int = 0
    zero_point: bool = False
    extra_bytes: int = 0  # per linear layer (quanto's input/output scale buffers)
    ragged_unquantized: bool = False
    min_cc: tuple[int, int] | None = None  # CUDA compute capability needed; None: runs on the CPU too
    cc_why: str = ""
    dtypes: tuple[str, ...] = ()  # model dtypes it quantizes; () = any
    dtype_why: str = ""
    lora: str | None = None  # why peft cannot train LoRA adapters on it (None: it can)
    kbit_prepare: bool = True  # peft's prepare_model_for_kbit_training accepts it
    upcasts: bool = False  # ... and that upcasts the unquantized parameters to float32

    def linear_bytes(self, in_features: int, out_features: int, dtype_bytes: int) -> int:
        """Bytes of one quantized linear's weight (data, scales, zero points, buffers)."""
        n = in_features * out_features
        if self.ragged_unquantized and in_features % self.group:
            return n * dtype_bytes
        groups = {
            "row": out_features,
            "group": out_features * math.ceil(in_features / max(self.group, 1)),
            "tile": math.ceil(out_features / max(self.group, 1))
            * math.ceil(in_features / max(self.group, 1)),
            "tensor": 1,
        }[self.scales]
        scale = self.scale_bytes or dtype_bytes * (2 if self.zero_point else 1)
        return math.ceil(n * self.bits / 8) + groups * scale + self.extra_bytes


METHODS: dict[str, QuantMethod] = {
    m.name: m
    for m in (
        # Int8Tensor: int8 data, a float32 scale and an int8 zero point per row (measured on CPU)
        QuantMethod("torchao-int8", "torchao", "torchao", 8, scale_bytes=5),
        # tinygemm int4 (tile_packed_to_4d, HQQ qparams): bfloat16 scale and zero per 128 weights
        QuantMethod(
            "torchao-int4",
            "torchao",
            "torchao",
            4,
            scales="group",
            group=128,
            scale_bytes=4,
            ragged_unquantized=True,
            min_cc=(8, 0),
            cc_why="torchao's int4 weight-only kernel (tinygemm) is CUDA-only",
            dtypes=("bfloat16",),
            dtype_why="the tinygemm int4 kernel takes bfloat16 only",
            lora="peft's torchao LoRA layer takes int8 weights only",
        ),
        # float8 weights and dynamically quantized float8 activations, one float32 scale per tensor
        QuantMethod(
            "torchao-float8",
            "torchao",
            "torchao",
            8,
            scales="tensor",
            scale_bytes=4,
            min_cc=(8, 9),
            cc_why="torchao's float8 matmul runs on float8 tensor cores",
            lora="peft's torchao LoRA layer takes int8 weights only",
        ),
        # HQQ: scale and zero point per 64 weights in the compute dtype (hqq's default layout)
        QuantMethod("hqq-4bit", "hqq", "hqq.core.quantize", 4, scales="group", group=64, zero_point=True),
        QuantMethod("hqq-8bit", "hqq", "hqq.core.quantize", 8, scales="group", group=64, zero_point=True),
        # quanto: int8 data and a compute-dtype scale per row; int4 packed, scale and shift per 128
        QuantMethod("quanto-int8", "optimum-quanto", "optimum.quanto", 8, extra_bytes=8, kbit_prepare=False),
        QuantMethod(
            "quanto-int4",
            "optimum-quanto",
            "optimum.quanto",
            4,
            scales="group",
            group=128,
            zero_point=True,
            extra_bytes=8,
            kbit_prepare=False,
        ),
        # FineGrainedFP8: float8_e4m3fn weights, a float32 inverse scale per 128 × 128 tile
        QuantMethod(
            "fp8",
            "",
            "transformers.integrations.finegrained_fp8",
            8,
            scales="tile",
            group=128,
            scale_bytes=4,
            min_cc=(8, 9),
            cc_why="float8 tensor cores; below 8.9 transformers silently dequantizes to "
            "bfloat16, which would measure an unquantized model",
            upcasts=True,
        ),
    )
}
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
