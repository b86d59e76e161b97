"""The on-the-fly quantizers of transformers 5 as values of the quantization knob, declared once.

`QuantMethod` says which library a value needs, the GPU it needs, the dtypes it takes, whether peft can
train LoRA adapters on it and how it stores a linear layer (the memory estimate reads that). Plain data:
loader.host reads the libraries to probe, loader.quantization builds configs and host checks from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["METHODS", "QUANT_EXTRA", "QuantMethod"]

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
    # what its linear keeps for backward beyond an unquantized frozen linear (measured with saved-tensor
    # hooks on tiny-llama): "weights" (torchao: the dequantized weight), "inputs" (quanto: the input)
    autograd_keeps: str = ""

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
        QuantMethod("torchao-int8", "torchao", "torchao", 8, scale_bytes=5, autograd_keeps="weights"),
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
        QuantMethod(
            "quanto-int8",
            "optimum-quanto",
            "optimum.quanto",
            8,
            extra_bytes=8,
            kbit_prepare=False,
            autograd_keeps="inputs",
        ),
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
            autograd_keeps="inputs",
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
