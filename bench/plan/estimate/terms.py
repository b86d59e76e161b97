"""The estimate's terms: bytes of weights, attention, one forward's peak and what autograd saves.

Each function follows what the code that runs a cell does (see bench.plan.estimate for the model);
bench.plan.estimate.phases adds the terms up per phase.
"""

from __future__ import annotations

import math

from bench.plan.estimate.arch import DTYPE_BYTES, LORA_RANK, Arch
from bench.plan.spec import QUANT_VARIANTS
from loader.quantization import METHODS, QuantMethod

__all__ = [
    "attention_backend",
    "forward_peak",
    "int8_kept_per_token_layer",
    "saved_per_token_layer",
    "weight_bytes",
]


def quant_method(quant: str) -> QuantMethod | None:
    """The on-the-fly quantizer behind a matrix quantization value (None: unquantized or bitsandbytes)."""
    return METHODS.get(QUANT_VARIANTS.get(quant, {}).get("quantization", ""))


def _quant_bytes(arch: Arch, quant: str, w: int) -> int:
    """Bytes of the decoder linears' weights under a quantization (without the rest of the model);
    `w` is the compute dtype's width (scales of some quantizers, layers they leave unquantized)."""
    total = 0
    for count, group in arch.linear_groups:
        total += count * _group_quant_bytes(group, quant, w)
    return total


def _group_quant_bytes(group: tuple[tuple[int, int, bool], ...], quant: str, w: int) -> int:
    """Bytes of one layer's linears of a group under a quantization."""
    method = quant_method(quant)
    total = 0
    for i, o, _ in group:
        n = i * o
        if method is not None:
            total += method.linear_bytes(i, o, w)
        elif quant in ("nf4", "fp4"):
            total += (n + 1) // 2 + math.ceil(n / 64) * 4
        elif quant in ("nf4-dq", "fp4-dq"):
            blocks = math.ceil(n / 64)
            total += (n + 1) // 2 + blocks + math.ceil(blocks / 256) * 4 + 256 * 4 + 4
        elif quant == "8bit":
            total += n + o * 4
        else:
            raise ValueError(f"unknown quantization {quant!r}")
    return total


def weight_bytes(arch: Arch, dtype: str, quant: str, *, kbit_training: bool = False) -> int:
    """Resident weights: quantized linears + the rest in the compute dtype (float32 once peft's
    prepare_model_for_kbit_training has run, for the quantizers it upcasts)."""
    w = DTYPE_BYTES[dtype]
    if quant == "none":
        return arch.params * w + arch.buffer_bytes
    method = quant_method(quant)
    upcast = kbit_training and (method is None or method.upcasts)
    return _quant_bytes(arch, quant, w) + arch.other_params * (4 if upcast else w) + arch.buffer_bytes


def attention_backend(attn: str, device: str, act_bytes: int, arch: Arch, masked: bool = False) -> str:
    """Which kernel a call ends up in, as the memory it keeps sees it.

    "flash": q, k, v (kv heads only), output, log-sum-exp (flash-attn, flex, sdpa's flash kernel).
    "flash_rep": the same with k/v repeated to every query head (transformers' repeat_kv).
    "math": sdpa's composite fallback (probability matrix materialised).
    "eager": transformers' eager attention.

    sdpa (torch's select_sdp_backend): transformers passes no mask and enable_gqa=True when it can
    (use_gqa_in_sdpa), else repeats k/v. On CUDA the flash kernel takes bf16/fp16 with GQA; the
    memory-efficient kernel takes float32 but not GQA; anything else falls to math. The CPU flash
    kernel takes every dtype and GQA. A pinned sdpa ("sdpa:math", ...) is the kernel it names.
    """
    if attn == "eager":
        return "eager"
    if attn == "sdpa:math":  # pinned: the composite kernel on every device
        return "math"
    if attn in ("sdpa:efficient", "sdpa:cudnn"):  # pinned CUDA kernels keep no scores; k/v repeated for GQA
        return "flash_rep" if arch.gqa else "flash"
    if attn == "sdpa:flash":
        attn = "sdpa"  # the flash kernel is what unpinned sdpa picks where flash can run
    if attn != "sdpa":
        return "flash"
    if masked:
        return "flash_rep" if arch.gqa else "flash"
    if device == "cuda":
        if act_bytes == 2 and arch.head_dim <= 256:
            return "flash"
        return "math" if arch.gqa else "flash"
    return "flash"  # the CPU flash kernel takes every dtype and grouped heads (torch >= 2.5)


def _attn_saved_per_token(arch: Arch, backend: str, a: int, ctx: int) -> float:
    """Bytes autograd keeps per token for one attention call (the o_proj input included)."""
    q, kv, heads = arch.q_dim, arch.kv_dim, arch.heads
    if backend == "flash":
        return a * (q + 2 * kv) + a * q + 4 * heads  # q, k, v, out (= o_proj input), lse
    if backend == "flash_rep":
        return a * 3 * q + a * q + 4 * heads
    if backend == "math":
        # q·s, k·s (expanded), v (expanded), softmax output, o_proj's contiguous copy
        return a * 3 * q + a * heads * ctx + a * q
    # eager: q, repeated k and v, float32 softmax output and its cast back, o_proj's copy
    return a * 3 * q + (4 + (a if a != 4 else 0)) * heads * ctx + a * q


def _attn_transient_per_token(arch: Arch, backend: str, a: int, ctx: int) -> float:
    """Bytes per token alive inside one no-grad attention call beyond q, k and v.

    eager: k/v repeated to every head; scaled scores, masked scores, float32 softmax and its cast
    (for float32 the cast is the same tensor): 8 bytes per score either way, plus the output.
    math (CUDA float32 with GQA): q and k scaled, k and v expanded; _safe_softmax holds the scores,
    the softmax, a bool map, zeros and the result. flash: the output and the log-sum-exp.
    """
    q, heads = arch.q_dim, arch.heads
    rep = 2 * a * q if arch.gqa else 0
    if backend == "eager":
        # softmax(dtype=float32) converts a half-precision input to a float32 copy first
        return rep + (a + 4 + (4 if a != 4 else 0)) * heads * ctx
    if backend == "math":
        return 4 * a * q + (4 * a + 1) * heads * ctx
    if backend == "flash_rep":
        return rep + a * q + 4 * heads
    return a * q + 4 * heads


def _linear_kernel_extra(arch: Arch, quant: str, a: int, tokens: int, device: str) -> float:
    """Temporaries a quantized linear's kernel allocates beyond its input and output (largest layer)."""
    if quant == "none":
        return 0.0
    if quant == "8bit":
        if device != "cuda":
            return max(i * o * 4 for i, o, _ in arch.linears)  # CPU: dequantized float weight
        # int8-quantized input, int32 accumulator, float16 result before the cast to the input dtype
        return max(tokens * (i + 6 * o) for i, o, _ in arch.linears)
    # 4-bit, and the other quantizers' CPU paths: the weight dequantized for the matmul
    return max(i * o * a for i, o, _ in arch.linears)


def forward_peak(
    arch: Arch,
    *,
    a: int,
    backend: str,
    quant: str,
    batch: int,
    seq: int,
    logit_tokens: int,
    kv_bytes: float,
    device: str,
) -> float:
    """Peak of one no-grad forward over batch × seq tokens above the weights.

    Alive throughout: the embedding output (the model keeps `inputs_embeds`), the residual stream,
    eager's 4-D mask; plus the KV cache being filled (kv_bytes: all layers, prompt length).
    """
    h, q, kv, i = arch.hidden, arch.q_dim, arch.kv_dim, arch.act_inter
    t = batch * seq
    # the embedding output stays referenced for the whole forward; rotary cos/sin and their float32
    # intermediates (about five head_dim-wide float32 rows per token)
    base = kv_bytes + a * h * t + 20 * arch.head_dim * t
    if backend == "eager":
        base += a * batch * seq * seq  # the 4-D float mask
    x = a * h * t  # the residual entering the layer (and, after the norm, the norm's output)
    # alive in a layer: the layer's input (the caller's reference), then the residual and the
    # normalised copy the sublayer works on
    norm = 2 * x + (8 + a) * h * t  # float32 copy and its square / product, then the cast
    qkv = a * (q + 2 * kv) * t
    rotary = 3 * x + qkv + 2 * a * q * t  # q·cos and rotate_half(q) beside q
    attn = 3 * x + qkv + t * _attn_transient_per_token(arch, backend, a, seq)
    extra = _linear_kernel_extra(arch, quant, a, t, device)
    mlp = 3 * x + 3 * a * i * t + extra  # + silu(gate), up, their product
    head = x + logit_tokens * arch.vocab * a
    return base + max(norm, rotary, attn, mlp, head)


def saved_per_token_layer(arch: Arch, *, a: int, backend: str, ctx: int, lora: bool) -> float:
    """Bytes autograd saves per token per decoder layer (no checkpointing).

    RMSNorm saves its float32 input (a copy unless the stream is float32) and its output (the
    next linear's input); a trainable norm weight also saves the normalised value it multiplies.
    Under LoRA the norms are frozen, so that one is not kept.

    LoRA on half-precision activations (no float32 upcast: unquantized, torchao, HQQ, quanto): the
    frozen base linears save no input; each float32 adapter casts its input and saves that copy (q, k
    and v each their own), so the norms' and the product's half-precision outputs are not kept.
    """
    h, i = arch.hidden, arch.act_inter
    lora_mid = 7 * 4 * LORA_RANK if lora else 0  # each adapter's A output, float32
    attn = _attn_saved_per_token(arch, backend, a, ctx)
    if lora and a != 4:
        adapter_inputs = 4 * (5 * h + arch.q_dim + i)  # q, k, v, gate, up: h; o: q_dim; down: inter
        return 2 * 4 * h + attn + 3 * a * i + adapter_inputs + lora_mid  # norms' float32 inputs; mlp
    norms = 2 * (4 + a + (0 if lora else a)) * h
    mlp = 4 * a * i  # gate output (silu input), silu output, up output, product (down input)
    return norms + attn + mlp + lora_mid


def int8_kept_per_token_layer(arch: Arch, a: int) -> float:
    """Linear inputs MatMul8bitLt keeps on ctx.tensors (outside saved-tensor hooks) per token-layer;
    quanto's linears save the same inputs (through the hooks)."""
    return a * (arch.hidden + arch.q_dim + arch.hidden + arch.act_inter)
