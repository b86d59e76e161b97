"""Every phase's predicted peak as named terms (`breakdown`), and their sums per phase (`estimate`).

The terms and why each is there are described in bench.plan.estimate; the fixed costs are here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.plan.estimate.arch import DTYPE_BYTES, LORA_RANK, Arch, arch_from_config
from bench.plan.estimate.terms import (
    attention_backend,
    forward_peak,
    int8_kept_per_token_layer,
    quant_method,
    saved_per_token_layer,
    weight_bytes,
)
from bench.plan.spec import QUANT_VARIANTS

__all__ = [
    "CPU_RUNTIME_BYTES",
    "CUBLAS_WORKSPACE_BYTES",
    "CUDA_CONTEXT_BYTES",
    "Phase",
    "breakdown",
    "estimate",
]

MiB = 1 << 20
CUDA_CONTEXT_BYTES = 500 * MiB
CUBLAS_WORKSPACE_BYTES = 32 * MiB  # torch's default cuBLAS/cuBLASLt workspace on sm90 (4096 KiB × 8)
CPU_RUNTIME_BYTES = 12 * MiB  # fitted: see bench.plan.estimate's docstring
_KBIT = tuple(q for q in QUANT_VARIANTS if q != "none")  # bitsandbytes' and the on-the-fly quantizers' values

Terms = dict[str, float]  # name -> bytes of the tensors alive at one candidate peak


@dataclass
class Phase:
    """One phase's predicted peak: named terms (bytes) and the fixed cost beside them."""

    terms: Terms = field(default_factory=dict)
    fixed: float = 0.0
    peak_at: str = ""

    @property
    def tensor_bytes(self) -> int:
        """The tensors alone: the torch allocator's view."""
        return int(sum(self.terms.values()))

    @property
    def total_bytes(self) -> int:
        """Tensors plus the fixed cost (CUDA context, or the CPU process's baseline and runtime)."""
        return int(self.tensor_bytes + self.fixed)


def _pick(candidates: dict[str, Terms]) -> tuple[str, Terms]:
    """The candidate peak with the most bytes alive, and its terms."""
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
    lora: bool | None = None,
    decode: str = "dynamic",
) -> dict[str, Phase]:
    """Every phase's peak as named terms: what `estimate` adds up (for reports and the CLI).

    `lora` is the cell's train_mode: None means its default (LoRA for k-bit, full otherwise). `decode`
    is the decode mode: static and compiled preallocate the whole KV cache before the prompt's forward.
    """
    arch = config if isinstance(config, Arch) else arch_from_config(config)
    if dtype == "auto":
        dtype = arch.dtype
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r} is not one of: {', '.join(DTYPE_BYTES)}")
    if quant != "none" and quant not in _KBIT:
        raise ValueError(f"quant {quant!r} is not one of: none, {', '.join(_KBIT)}")
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    cache = (not grad_ckpt) if use_cache is None else bool(use_cache)
    kbit = quant != "none"
    lora = kbit if lora is None else bool(lora)
    w = DTYPE_BYTES[dtype]
    v = arch.vocab
    t = batch * seq
    ws = workspace_bytes if dev == "cuda" else 0
    fixed = cuda_context_bytes if dev == "cuda" else baseline_bytes + cpu_runtime_bytes
    weights = weight_bytes(arch, dtype, quant)
    # CPU: from_pretrained maps the safetensors files. Tensors loaded in the checkpoint's own dtype
    # stay views of that mapping (they *are* the weights); a dtype conversion reads the whole file
    # while loading; quantizing reads the linears' pages, which stay resident in the mapping as
    # long as the unquantized tensors (embeddings, norms) keep it alive.
    ckpt_w = DTYPE_BYTES.get(arch.dtype, 4)
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
        return forward_peak(
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
    load_candidates: dict[str, Terms] = {
        "forward": {"activations": first},
        "finite check": {"logits": finite_check_bytes},
    }
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
    if cache and decode != "dynamic":
        # StaticCache: every layer's keys and values for max_cache_len = seq + new_tokens, allocated before
        # the prompt's forward and never grown, so no layer's cat copy; compiled forwards keep the same cache
        full_kv = 2 * arch.kv_dim * w * arch.layers * batch * (seq + new_tokens)
        name, terms = _pick(
            {
                "prompt forward": {"static KV cache + activations": fwd(seq, batch, full_kv)},
                "last step": {"static KV cache": full_kv, "logits": last},
            }
        )
    elif cache:
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
    # peft's prepare_model_for_kbit_training upcasts norms and embeddings, so activations are float32
    # (bitsandbytes, FineGrainedFP8); it leaves torchao and HQQ models alone, and quanto skips it
    method = quant_method(quant)
    a = 4 if kbit and (method is None or method.upcasts) else w
    train_weights = weight_bytes(arch, dtype, quant, kbit_training=kbit)
    # peft keeps adapters in float32 on a half-precision model too (autocast_adapter_dtype)
    trainable, tw = (arch.lora_params(), 4) if lora else (arch.params, w)
    backend = attention_backend(attn, dev, a, arch)
    grads = trainable * tw
    states = 2 * trainable * tw
    if dev == "cuda":  # foreach AdamW: sqrt(exp_avg_sq) of every parameter at once
        opt_temp = trainable * tw
    else:  # single-tensor AdamW: sqrt and the divided copy of the largest parameter
        largest = max(LORA_RANK * max(i, o) for i, o, _ in arch.linears) if lora else arch.largest_param
        opt_temp = 2 * largest * tw
    per_layer = saved_per_token_layer(arch, a=a, backend=backend, ctx=seq, lora=lora)
    keeps = method.autograd_keeps if method is not None else ""
    if keeps == "inputs":  # quanto's linears save their input (through the hooks: checkpointing drops it)
        per_layer += int8_kept_per_token_layer(arch, a)
    # torchao's linears save the dequantized weight (per layer; checkpointing keeps one layer's at a time)
    layer_dequantized = arch.linear_params * w / arch.layers if keeps == "weights" else 0.0
    # the final norm: its float32 input, and (LM head trainable) its normalised value and output
    final_norm = (4 if lora else 4 + 2 * a) * arch.hidden * t
    stored: float
    if grad_ckpt:
        stored = a * arch.hidden * t * arch.layers + final_norm
        if quant == "8bit":
            stored += int8_kept_per_token_layer(arch, a) * t * arch.layers
        recompute = per_layer * t + layer_dequantized
    else:
        stored = per_layer * t * arch.layers + final_norm + layer_dequantized * arch.layers
        recompute = 0.0
    loss = 3 * t * v * 4  # float32 log-softmax output, its incoming and outgoing gradient
    common: Terms = {"weights": train_weights, "optimizer states": states}
    candidates: dict[str, Terms] = {
        "loss backward": {**common, "activations": stored, "logits (float32)": loss},
        "optimizer step": {**common, "gradients": grads, "optimizer temporaries": opt_temp},
    }
    if grad_ckpt:
        candidates["recompute"] = {**common, "gradients": grads, "activations": stored + recompute}
    if arch.tied and not lora:  # the embedding's gradient is summed into the LM head's at the end
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
    lora: bool | None = None,
    decode: str = "dynamic",
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
        lora=lora,
        decode=decode,
    )
    out: dict[str, int] = {}
    for name, phase in phases.items():
        out[f"mem.{name}.estimate_bytes"] = phase.total_bytes
        out[f"mem.{name}.estimate_tensor_bytes"] = phase.tensor_bytes
    return out
