"""Analytical peak memory per phase, from the architecture and the knobs: runs nothing.

`estimate()` predicts `mem.<phase>.estimate_bytes` for the four phases the worker measures (load,
prefill, decode, train), by adding up the tensors that are alive at each phase's peak. Every term
follows from what the code that runs the cell does (bench/measure/cell.py, bench/measure/workloads.py,
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

The package: `arch` (the shapes), `terms` (the terms above), `phases` (their sums per phase, and the
fixed costs) and `table` (the `loadbench estimate` rows). This entry module applies the model to cells
and records, and its names are the ones callers import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.plan.estimate.arch import DTYPE_BYTES, LORA_RANK, Arch, arch_from_config, config_for
from bench.plan.estimate.phases import (
    CPU_RUNTIME_BYTES,
    CUBLAS_WORKSPACE_BYTES,
    CUDA_CONTEXT_BYTES,
    Phase,
    breakdown,
    estimate,
)
from bench.plan.estimate.table import estimate_table
from bench.plan.estimate.terms import attention_backend, weight_bytes
from bench.schema import PHASES

__all__ = [
    "CPU_RUNTIME_BYTES",
    "CUBLAS_WORKSPACE_BYTES",
    "CUDA_CONTEXT_BYTES",
    "DTYPE_BYTES",
    "LORA_RANK",
    "PHASES",
    "Arch",
    "Phase",
    "arch_from_config",
    "attention_backend",
    "breakdown",
    "config_for",
    "estimate",
    "estimate_cell",
    "estimate_records",
    "estimate_table",
    "weight_bytes",
]


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
        lora=None if getattr(cell, "mode", None) is None else cell.mode == "lora",
        decode=getattr(cell, "decode", "dynamic"),
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
            lora=rec["train_mode"] == "lora" if rec.get("train_mode") else None,
            decode=rec.get("decode") or "dynamic",
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
