"""Analytical peak memory per phase, from the architecture and the knobs: runs nothing.

`estimate()` predicts `mem.<phase>.estimate_bytes` for the four phases the worker measures (load,
prefill, decode, train), by adding up the tensors that are alive at each phase's peak. Every term
follows from what the code that runs the cell does (bench/worker.py, bench/workloads.py,
transformers 5, bitsandbytes, peft, torch); nothing is fitted per cell. The terms:

weights
    unquantized: every parameter in the compute dtype. bitsandbytes 4-bit (nf4/fp4): each decoder
    linear weight packs two values per byte, plus one float32 absmax per 64-value block; double
    quantization stores the absmax as one byte per block plus a float32 per 256 blocks and a
    256-entry code book. 8-bit: one byte per weight plus a float32 scale per output row (SCB).
    Embeddings, the LM head (tied or not), norms and biases stay in the compute dtype: this is
    what transformers' bnb quantizer keeps unconverted (checked on a tiny model, see the tests).
gradients / optimizer
    full fine-tune (quant none): one gradient per parameter and torch AdamW's exp_avg and
    exp_avg_sq, both in the *parameter* dtype (zeros_like(p)), not float32. The optimizer step
    adds temporaries: on CUDA the foreach implementation's sqrt(exp_avg_sq) for every parameter at
    once; on the CPU (single-tensor implementation) two temporaries of the largest parameter.
    k-bit cells train LoRA r=8 on every linear (peft), adapters in float32; and
    prepare_model_for_kbit_training upcasts every non-quantized parameter (embeddings, LM head,
    norms, biases) to float32, which also makes the whole residual stream float32.
activations (training)
    what autograd saves per token per decoder layer, counted op by op for the Llama/Qwen2
    decoder: RMSNorm saves a float32 copy and two compute-dtype tensors; the attention saves what
    its backend saves (flash / memory-efficient: q, k, v, output and the log-sum-exp; math and
    eager: the batch × heads × seq × seq probability matrix as well, and k/v repeated to every
    query head); the gated MLP saves four intermediate-size tensors. With gradient checkpointing
    only each layer's input is kept (plus, for bitsandbytes 8-bit, every linear's input, which
    MatMul8bitLt keeps on ctx.tensors where checkpointing's saved-tensor hooks cannot drop it).
logits
    batch × seq × vocab in the LM head's dtype; the loss upcasts to float32 and at the peak of the
    loss's backward three float32 copies are alive (log-softmax output, its incoming and outgoing
    gradient). The worker's NaN/Inf check on logits is a float32 sum, which allocates nothing
    tensor-sized on CUDA; on the CPU a bf16/fp16 input is first copied to float32 (ATen's
    make_reduction converts unless the tensor is on a GPU). (Until 2026-11-27 it was `torch.isfinite(t).all()`, which held an abs copy and three
    bool maps beside the logits; the H100 records in results/h100-2026-11-27 were measured with it.)
KV cache
    2 · layers · kv_heads · head_dim · (seq + new_tokens − 1) · batch · bytes, plus one layer's copy
    while DynamicCache concatenates the next token.
checkpoint file (CPU)
    from_pretrained maps the safetensors files. Loaded in the checkpoint's own dtype, tensors stay
    views of the mapping (the weights are the file's pages, counted once). Converting the dtype
    reads the whole file during from_pretrained (a load-phase peak of weights + file). Quantizing
    in the checkpoint's dtype reads the linears' pages, which then stay resident for the model's
    life: the unquantized embeddings and norms are views that keep the mapping alive.
fixed costs
    CUDA: the context (`cuda_context_bytes`, default 500 MiB; 480 MiB measured on the H100 run)
    outside the allocator, and one 32 MiB cuBLAS workspace per thread that runs matmuls (torch's
    default on Hopper) inside it: one for inference, two for training (the autograd engine runs
    the backward on its own device thread). CPU: the process baseline RSS (`baseline_bytes`, the RSS
    before loading) plus `cpu_runtime_bytes` (12 MiB), the RSS a cell adds besides tensors: kernel
    code paged in on first use, the tokenizer, the model's Python objects, allocator arenas. This
    is the one fitted constant: the median of (RSS growth − tensor estimate) of the load phase over
    the 24 default-preset cells (tiny-llama, batch 2 × seq 64, tensors < 5 MiB there).

Returned per phase: `mem.<phase>.estimate_bytes` (what the process needs: tensors + context, or
baseline RSS + tensors on the CPU) and `mem.<phase>.estimate_tensor_bytes` (the torch allocator's
view: comparable with `torch_allocated_bytes` peaks on CUDA, RSS growth on the CPU).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PHASES",
    "Arch",
    "arch_from_config",
    "breakdown",
    "estimate",
    "estimate_cell",
    "estimate_records",
    "register",
]

PHASES = ("load", "prefill", "decode", "train")
MiB = 1 << 20
CUDA_CONTEXT_BYTES = 500 * MiB
CUBLAS_WORKSPACE_BYTES = 32 * MiB  # torch's default cuBLAS/cuBLASLt workspace on sm90 (4096 KiB × 8)
CPU_RUNTIME_BYTES = 12 * MiB  # fitted: see the module docstring
LORA_RANK = 8  # bench.measure.workloads.attach_lora
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_KBIT = ("nf4", "fp4", "nf4-dq", "fp4-dq", "8bit")


# ---------------------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class Arch:
    """The shapes of a Llama/Qwen2-style decoder, read from a config.json dict."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    inter: int
    vocab: int
    tied: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    dtype: str = "float32"  # what "auto" loads

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def gqa(self) -> bool:
        return self.kv_heads != self.heads

    @functools.cached_property
    def linears(self) -> tuple[tuple[int, int, bool], ...]:
        """(in, out, bias) of each decoder layer's linear layers (the ones bnb quantizes)."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.inter
        return (
            (h, q, self.qkv_bias),
            (h, kv, self.qkv_bias),
            (h, kv, self.qkv_bias),
            (q, h, self.o_bias),
            (h, i, self.mlp_bias),
            (h, i, self.mlp_bias),
            (i, h, self.mlp_bias),
        )

    @functools.cached_property
    def linear_params(self) -> int:
        """Weights of all decoder linears (the quantizable part)."""
        return self.layers * sum(i * o for i, o, _ in self.linears)

    @functools.cached_property
    def other_params(self) -> int:
        """Parameters bitsandbytes leaves in the compute dtype: embeddings, LM head, norms, biases."""
        bias = sum(o for _, o, b in self.linears if b)
        per_layer = 2 * self.hidden + bias
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + head + self.layers * per_layer + self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    @property
    def largest_param(self) -> int:
        return max(self.vocab * self.hidden, *(i * o for i, o, _ in self.linears))

    @property
    def buffer_bytes(self) -> int:
        return 2 * (self.head_dim // 2) * 4  # rotary inv_freq and original_inv_freq, float32

    def lora_params(self, rank: int = LORA_RANK) -> int:
        return self.layers * sum(rank * (i + o) for i, o, _ in self.linears)


def arch_from_config(config: Mapping[str, Any]) -> Arch:
    """An Arch from a transformers config.json dict (Llama, Qwen2, SmolLM and their kin)."""
    h = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or h // heads)
    model_type = str(config.get("model_type", "llama"))
    attention_bias = bool(config.get("attention_bias", False))
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return Arch(
        hidden=h,
        heads=heads,
        kv_heads=kv,
        head_dim=head_dim,
        layers=int(config["num_hidden_layers"]),
        inter=int(config["intermediate_size"]),
        vocab=int(config["vocab_size"]),
        tied=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        dtype=dtype if dtype in _DTYPE_BYTES else "float32",
    )


# ---------------------------------------------------------------------------------------------- weights


def _quant_bytes(arch: Arch, quant: str) -> int:
    """Bytes of the decoder linears' weights under a quantization (without the rest of the model)."""
    total = 0
    for i, o, _ in arch.linears:
        n = i * o
        if quant in ("nf4", "fp4"):
            total += (n + 1) // 2 + math.ceil(n / 64) * 4
        elif quant in ("nf4-dq", "fp4-dq"):
            blocks = math.ceil(n / 64)
            total += (n + 1) // 2 + blocks + math.ceil(blocks / 256) * 4 + 256 * 4 + 4
        elif quant == "8bit":
            total += n + o * 4
        else:
            raise ValueError(f"unknown quantization {quant!r}")
    return arch.layers * total


def weight_bytes(arch: Arch, dtype: str, quant: str, *, kbit_training: bool = False) -> int:
    """Resident weights: quantized linears + the rest in the compute dtype (float32 once peft's
    prepare_model_for_kbit_training has run)."""
    w = _DTYPE_BYTES[dtype]
    if quant == "none":
        return arch.params * w + arch.buffer_bytes
    rest = 4 if kbit_training else w
    return _quant_bytes(arch, quant) + arch.other_params * rest + arch.buffer_bytes


# ------------------------------------------------------------------------------------------- attention


def attention_backend(attn: str, device: str, act_bytes: int, arch: Arch, masked: bool = False) -> str:
    """Which kernel a call ends up in, as the memory it keeps sees it.

    "flash": q, k, v (kv heads only), output, log-sum-exp (flash-attn, flex, sdpa's flash kernel).
    "flash_rep": the same with k/v repeated to every query head (transformers' repeat_kv).
    "math": sdpa's composite fallback (probability matrix materialised).
    "eager": transformers' eager attention.

    sdpa (torch's select_sdp_backend): transformers passes no mask and enable_gqa=True when it can
    (use_gqa_in_sdpa), else repeats k/v. On CUDA the flash kernel takes bf16/fp16 with GQA; the
    memory-efficient kernel takes float32 but not GQA; anything else falls to math. The CPU flash
    kernel takes every dtype and GQA.
    """
    if attn == "eager":
        return "eager"
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


# ---------------------------------------------------------------------------------------- components


def _linear_kernel_extra(arch: Arch, quant: str, a: int, tokens: int, device: str) -> float:
    """Temporaries a quantized linear's kernel allocates beyond its input and output (largest layer)."""
    if quant == "none":
        return 0.0
    if quant == "8bit":
        if device != "cuda":
            return max(i * o * 4 for i, o, _ in arch.linears)  # CPU: dequantized float weight
        # int8-quantized input, int32 accumulator, float16 result before the cast to the input dtype
        return max(tokens * (i + 6 * o) for i, o, _ in arch.linears)
    return max(i * o * a for i, o, _ in arch.linears)  # 4-bit: weight dequantized for the matmul


def _forward_peak(
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
    h, q, kv, i = arch.hidden, arch.q_dim, arch.kv_dim, arch.inter
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


def _saved_per_token_layer(arch: Arch, *, a: int, backend: str, ctx: int, lora: bool) -> float:
    """Bytes autograd saves per token per decoder layer (no checkpointing).

    RMSNorm saves its float32 input (a copy unless the stream is float32) and its output (the
    next linear's input); a trainable norm weight also saves the normalised value it multiplies.
    Under LoRA the norms are frozen, so that one is not kept.
    """
    h, i = arch.hidden, arch.inter
    norms = 2 * (4 + a + (0 if lora else a)) * h
    mlp = 4 * a * i  # gate output (silu input), silu output, up output, product (down input)
    lora_mid = 7 * 4 * LORA_RANK if lora else 0  # each adapter's A output, float32
    return norms + _attn_saved_per_token(arch, backend, a, ctx) + mlp + lora_mid


def _int8_kept_per_token_layer(arch: Arch, a: int) -> float:
    """Linear inputs MatMul8bitLt keeps on ctx.tensors (outside saved-tensor hooks) per token-layer."""
    return a * (arch.hidden + arch.q_dim + arch.hidden + arch.inter)


@dataclass
class Phase:
    """One phase's predicted peak: named terms (bytes) and the fixed cost beside them."""

    terms: dict[str, float] = field(default_factory=dict)
    fixed: float = 0.0
    peak_at: str = ""

    @property
    def tensor_bytes(self) -> int:
        return int(sum(self.terms.values()))

    @property
    def total_bytes(self) -> int:
        return int(self.tensor_bytes + self.fixed)


def _pick(candidates: dict[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    name = max(candidates, key=lambda k: sum(candidates[k].values()))
    return name, candidates[name]


def breakdown(
    config: Mapping[str, Any] | Arch,
    *,
    dtype: str,
    quant: str,
    attn: str,
    grad_ckpt: bool,
    batch: int,
    seq: int,
    new_tokens: int,
    device: str = "cuda",
    baseline_bytes: int = 0,
    use_cache: bool | None = None,
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
    workspace_bytes: int = CUBLAS_WORKSPACE_BYTES,
    cpu_runtime_bytes: int = CPU_RUNTIME_BYTES,
    finite_check: str = "sum",
) -> dict[str, Phase]:
    """Every phase's peak as named terms: what `estimate` adds up (for reports and the CLI)."""
    arch = config if isinstance(config, Arch) else arch_from_config(config)
    if dtype == "auto":
        dtype = arch.dtype
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r} is not one of: {', '.join(_DTYPE_BYTES)}")
    if quant != "none" and quant not in _KBIT:
        raise ValueError(f"quant {quant!r} is not one of: none, {', '.join(_KBIT)}")
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    cache = (not grad_ckpt) if use_cache is None else bool(use_cache)
    kbit = quant != "none"
    w = _DTYPE_BYTES[dtype]
    v = arch.vocab
    t = batch * seq
    ws = workspace_bytes if dev == "cuda" else 0
    fixed = cuda_context_bytes if dev == "cuda" else baseline_bytes + cpu_runtime_bytes
    weights = weight_bytes(arch, dtype, quant)
    # CPU: from_pretrained maps the safetensors files. Tensors loaded in the checkpoint's own dtype
    # stay views of that mapping (they *are* the weights); a dtype conversion reads the whole file
    # while loading; quantizing reads the linears' pages, which stay resident in the mapping as
    # long as the unquantized tensors (embeddings, norms) keep it alive.
    ckpt_w = _DTYPE_BYTES.get(arch.dtype, 4)
    mapped = loading = 0
    if dev == "cpu":
        if dtype != arch.dtype:
            loading = arch.params * ckpt_w
        elif kbit:
            mapped = arch.linear_params * ckpt_w
    file_terms = {"checkpoint file (mmap)": mapped} if mapped else {}
    infer_backend = attention_backend(attn, dev, w, arch)
    out: dict[str, Phase] = {}

    def fwd(tokens_seq: int, logit_tokens: int, kv_bytes: float) -> float:
        return _forward_peak(
            arch,
            a=w,
            backend=infer_backend,
            quant=quant,
            batch=batch,
            seq=tokens_seq,
            logit_tokens=logit_tokens,
            kv_bytes=kv_bytes,
            device=dev,
        )

    # load: from_pretrained, then one no-grad forward whose logits are checked for NaN/Inf: a float32
    # sum holds nothing beside the logits; the older isfinite(t).all() (the H100 records' worker)
    # held an abs copy and three bool maps: (t == t) * (t.abs() != inf)
    if finite_check == "sum":
        # CUDA reduces bf16/fp16 into float32 directly; the CPU reduction first copies the input to
        # the output dtype (ATen make_reduction), so a half-precision sum holds a float32 copy
        finite_check_bytes = t * v * w + (t * v * 4 if dev == "cpu" and w != 4 else 0)
    elif finite_check == "isfinite":
        finite_check_bytes = t * v * (2 * w + 3)
    else:
        raise ValueError(f"finite_check {finite_check!r} is not one of: sum, isfinite")
    first = fwd(seq, t, 0)
    load_candidates = {"forward": {"activations": first}, "finite check": {"logits": finite_check_bytes}}
    if loading:
        load_candidates["from_pretrained"] = {"checkpoint file (mmap)": loading}
    name, terms = _pick(load_candidates)
    out["load"] = Phase({"weights": weights, **file_terms, **terms, "cuBLAS workspace": ws}, fixed, name)

    # prefill: repeated forwards; the previous step's logits are alive during the next one
    name, terms = _pick(
        {
            "forward": {"previous logits": t * v * w, "activations": first},
            "finite check": {"logits": finite_check_bytes},
        }
    )
    out["prefill"] = Phase({"weights": weights, **file_terms, **terms, "cuBLAS workspace": ws}, fixed, name)

    # decode: greedy generate; logits only for the last position (logits_to_keep=1)
    last = batch * v * (w + 4)  # the last position's logits and generate's float32 copy
    if cache:
        per_tok_layer = 2 * arch.kv_dim * w
        prompt_kv = per_tok_layer * arch.layers * t
        final_len = seq + new_tokens - 1
        final_kv = per_tok_layer * batch * final_len * (arch.layers + 0.5)  # + one layer's cat copy
        name, terms = _pick(
            {
                "prompt forward": {"KV cache + activations": fwd(seq, batch, prompt_kv)},
                "last step": {"KV cache": final_kv, "logits": last},
            }
        )
    else:
        name, terms = "longest forward", {"activations": fwd(seq + new_tokens - 1, batch, 0)}
    out["decode"] = Phase({"weights": weights, **file_terms, **terms, "cuBLAS workspace": ws}, fixed, name)

    # train: forward + backward + AdamW step on the trainable parameters
    a = 4 if kbit else w
    train_weights = weight_bytes(arch, dtype, quant, kbit_training=kbit)
    trainable, tw = (arch.lora_params(), 4) if kbit else (arch.params, w)
    backend = attention_backend(attn, dev, a, arch)
    grads = trainable * tw
    states = 2 * trainable * tw
    if dev == "cuda":  # foreach AdamW: sqrt(exp_avg_sq) of every parameter at once
        opt_temp = trainable * tw
    else:  # single-tensor AdamW: sqrt and the divided copy of the largest parameter
        largest = max(LORA_RANK * max(i, o) for i, o, _ in arch.linears) if kbit else arch.largest_param
        opt_temp = 2 * largest * tw
    per_layer = _saved_per_token_layer(arch, a=a, backend=backend, ctx=seq, lora=kbit)
    # the final norm: its float32 input, and (LM head trainable) its normalised value and output
    final_norm = (4 if kbit else 4 + 2 * a) * arch.hidden * t
    if grad_ckpt:
        stored = a * arch.hidden * t * arch.layers + final_norm
        if quant == "8bit":
            stored += _int8_kept_per_token_layer(arch, a) * t * arch.layers
        recompute = per_layer * t
    else:
        stored = per_layer * t * arch.layers + final_norm
        recompute = 0.0
    loss = 3 * t * v * 4  # float32 log-softmax output, its incoming and outgoing gradient
    common = {"weights": train_weights, "optimizer states": states}
    candidates = {
        "loss backward": {**common, "activations": stored, "logits (float32)": loss},
        "optimizer step": {**common, "gradients": grads, "optimizer temporaries": opt_temp},
    }
    if grad_ckpt:
        candidates["recompute"] = {**common, "gradients": grads, "activations": stored + recompute}
    if arch.tied and not kbit:  # the embedding's gradient is summed into the LM head's at the end
        candidates["backward end"] = {**common, "gradients": grads + v * arch.hidden * w}
    name, terms = _pick(candidates)
    out["train"] = Phase({**terms, **file_terms, "cuBLAS workspaces": 2 * ws}, fixed, name)
    return out


def estimate(
    config: Mapping[str, Any] | Arch,
    *,
    dtype: str,
    quant: str,
    attn: str,
    grad_ckpt: bool,
    batch: int,
    seq: int,
    new_tokens: int,
    device: str = "cuda",
    baseline_bytes: int = 0,
    use_cache: bool | None = None,
    cuda_context_bytes: int = CUDA_CONTEXT_BYTES,
    finite_check: str = "sum",
) -> dict[str, int]:
    """Predicted peak per phase: `mem.<phase>.estimate_bytes` (tensors + CUDA context; on the CPU
    tensors + `baseline_bytes` + the runtime's own growth) and `mem.<phase>.estimate_tensor_bytes`
    (tensors only: the allocator's view on CUDA).

    `use_cache` None means the matrix's "auto": off under gradient checkpointing, on otherwise.
    `finite_check` is the worker's NaN/Inf guard on logits: "sum" (now) or "isfinite" (records
    measured before 2026-11-27, e.g. results/h100-2026-11-27).
    """
    phases = breakdown(
        config,
        dtype=dtype,
        quant=quant,
        attn=attn,
        grad_ckpt=grad_ckpt,
        batch=batch,
        seq=seq,
        new_tokens=new_tokens,
        device=device,
        baseline_bytes=baseline_bytes,
        use_cache=use_cache,
        cuda_context_bytes=cuda_context_bytes,
        finite_check=finite_check,
    )
    out: dict[str, int] = {}
    for name, phase in phases.items():
        out[f"mem.{name}.estimate_bytes"] = phase.total_bytes
        out[f"mem.{name}.estimate_tensor_bytes"] = phase.tensor_bytes
    return out


# ----------------------------------------------------------------------------------------------- cells


@functools.lru_cache(maxsize=64)
def _preset_arch(name: str) -> Arch:
    from bench.plan.checkpoints import load_preset

    return arch_from_config(load_preset(name))


def config_for(model: str | Path) -> Arch:
    """The Arch of a model: an architecture preset name, a checkpoint directory or a config.json."""
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return arch_from_config(json.loads(path.read_text(encoding="utf-8")))
    return _preset_arch(str(model))


def estimate_cell(
    cell: Any,
    config: Mapping[str, Any] | Arch | None = None,
    device: str = "cuda",
    baseline_bytes: int = 0,
) -> dict[str, int]:
    """Estimate columns for a bench.plan.matrix.Cell (run or skipped): load plus the cell's workloads.

    `config` defaults to the cell's model (preset name or checkpoint directory). The cell's
    use_cache knob is honoured ("auto": off under checkpointing).
    """
    arch = config_for(cell.model) if config is None else config
    cache = None if cell.use_cache == "auto" else cell.use_cache == "on"
    cols = estimate(
        arch,
        dtype=cell.dtype,
        quant=cell.quant,
        attn=cell.attn,
        grad_ckpt=cell.grad_ckpt,
        batch=cell.shape.batch,
        seq=cell.shape.seq,
        new_tokens=cell.shape.new_tokens,
        device=device,
        baseline_bytes=baseline_bytes,
        use_cache=cache,
    )
    keep = ("load", *cell.workloads)
    return {k: val for k, val in cols.items() if k.split(".")[1] in keep}


def estimate_records(
    records: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any] | Arch,
    device: str = "cuda",
    finite_check: str = "sum",
) -> list[dict[str, Any]]:
    """Per ok record and phase: measured vs predicted peak, and the relative error (estimate/measured − 1).

    CUDA: the torch allocator's peak (`mem.<phase>.torch_allocated_bytes`) against
    `estimate_tensor_bytes`. CPU: RSS growth (`mem.<phase>.rss_bytes` − `mem.baseline_rss_bytes`, the
    RSS before loading, which the record must carry) against `estimate_bytes` − that baseline.
    """
    rows = []
    for rec in records:
        if rec.get("status") != "ok":
            continue
        base = int(rec.get("mem.baseline_rss_bytes") or 0)
        if device != "cuda" and not base:
            continue
        cache = None if rec.get("use_cache", "auto") == "auto" else rec["use_cache"] == "on"
        est = estimate(
            config,
            dtype=rec.get("dtype_resolved") or rec["dtype"],
            quant=rec["quant"],
            attn=rec["attn"],
            grad_ckpt=bool(rec["grad_ckpt"]),
            batch=int(rec["batch"]),
            seq=int(rec["seq"]),
            new_tokens=int(rec["new_tokens"]),
            device=device,
            baseline_bytes=base,
            use_cache=cache,
            finite_check=finite_check,
        )
        for phase in PHASES:
            if device == "cuda":
                measured = rec.get(f"mem.{phase}.torch_allocated_bytes")
                predicted = est[f"mem.{phase}.estimate_tensor_bytes"]
            else:
                rss = rec.get(f"mem.{phase}.rss_bytes")
                measured = None if rss is None else rss - base
                predicted = est[f"mem.{phase}.estimate_bytes"] - base
            if measured and measured > 0:
                rows.append(
                    {
                        "label": rec.get("label"),
                        "phase": phase,
                        "measured": int(measured),
                        "estimate": int(predicted),
                        "error": predicted / measured - 1.0,
                    }
                )
    return rows


# ------------------------------------------------------------------------------------------------- CLI


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `loadbench estimate` to the CLI's subparsers (bench.cli.build_parser)."""
    p = subparsers.add_parser(
        "estimate",
        help="predict peak memory per phase for every combination of knobs (runs nothing)",
        description="Predicted peak memory (bench/estimate.py) of every dtype × quantization × attention "
        "(× checkpointing for training) combination of an architecture, marked by whether it fits.",
    )
    p.add_argument(
        "--arch", default="qwen2.5-1.5b", help="architecture preset, checkpoint dir or config.json"
    )
    p.add_argument("--vram", default=None, help="memory to fit in, e.g. 24GiB (default: no fit column)")
    p.add_argument("--task", choices=("train", "infer"), default="train")
    p.add_argument("--preset", default="gpu", help="matrix preset whose axes and shape are the defaults")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--new-tokens", dest="new_tokens", type=int)
    p.add_argument("--dtype", help="comma list (default: the preset's)")
    p.add_argument("--quant", help="comma list (default: the preset's)")
    p.add_argument("--attn", help="comma list (default: the preset's)")
    p.add_argument("--grad-ckpt", dest="grad_ckpt", help="comma list of off,on (train only)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.set_defaults(func=_cmd_estimate)
    return p


def _axis(text: str | None, default: Sequence[Any]) -> list[Any]:
    if not text:
        return list(default)
    return [s.strip() for s in text.split(",") if s.strip()]


def estimate_table(args: argparse.Namespace) -> tuple[list[str], list[list[str]], str]:
    """Header, rows and title of the `loadbench estimate` table (separate from printing, for tests)."""
    from bench.plan.matrix import load_preset
    from bench.units import fmt_bytes, parse_size

    spec = load_preset(args.preset)
    arch = config_for(args.arch)
    vram = parse_size(args.vram, "--vram") if args.vram else None
    batch = args.batch or spec.shape.batch
    seq = args.seq or spec.shape.seq
    new = args.new_tokens or spec.shape.new_tokens
    dtypes = _axis(args.dtype, spec.dtype)
    quants = _axis(args.quant, spec.quant)
    attns = _axis(args.attn, spec.attn)
    if args.task == "train":
        ckpts = [c in ("on", "true", "1", "yes") for c in _axis(args.grad_ckpt, ["off", "on"])]
        phases = ("load", "train")
    else:
        ckpts, phases = [False], ("load", "prefill", "decode")
    header = ["dtype", "quant", "attn", "ckpt", "weights", *phases, "peak"]
    if vram is not None:
        header.append(f"fits {fmt_bytes(vram)}")
    rows = []
    for dtype, quant, attn, ckpt in itertools.product(dtypes, quants, attns, ckpts):
        parts = breakdown(
            arch,
            dtype=dtype,
            quant=quant,
            attn=attn,
            grad_ckpt=ckpt,
            batch=batch,
            seq=seq,
            new_tokens=new,
            device=args.device,
        )
        peaks = [parts[p].total_bytes for p in phases]
        row = [dtype, quant, attn, "on" if ckpt else "off", fmt_bytes(parts["load"].terms["weights"])]
        row += [fmt_bytes(x) for x in peaks] + [fmt_bytes(max(peaks))]
        if vram is not None:
            peak = max(peaks)
            row.append("yes" if peak <= 0.9 * vram else "tight" if peak <= vram else "no")
        rows.append(row)
    title = (
        f"{args.arch}: predicted peak memory, {args.task}, batch {batch} × seq {seq}"
        + (f", {new} new tokens" if args.task == "infer" else "")
        + (" (incl. CUDA context)" if args.device == "cuda" else " (tensors; add the process RSS)")
    )
    return header, rows, title


def _cmd_estimate(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console
    from rich.table import Table

    header, rows, title = estimate_table(args)
    table = Table(title=title)
    for i, col in enumerate(header):
        table.add_column(col, justify="right" if i >= 4 else "left")
    for row in rows:
        style = {"no": "red", "tight": "yellow"}.get(row[-1]) if args.vram else None
        table.add_row(*row, style=style)
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    if args.vram:
        print("fits: yes = peak ≤ 90 % of the memory (room for allocator fragmentation); tight = ≤ 100 %.")
    return 0
