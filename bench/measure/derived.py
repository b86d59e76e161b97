"""Metrics derived from measured ones: FLOPs per token, MFU, MBU, energy per token.

Conventions (DESIGN.md section 6): N counts the parameters of every matrix multiply (attention and MLP
projections of each layer plus the LM head; the embedding lookup is not a multiply). Attention adds
2·L·d_attn·seq FLOPs per token for QKᵀ and AV in a forward pass (the PaLM appendix's 12·L·H·Q·T for
training is three times 4·L·d_attn·T; causal masking is not discounted, as in PaLM). Training costs
3× a forward (6N): forward, activation gradients and weight gradients. LoRA cells train frozen base
weights, whose weight gradients are never computed, so they cost 2× a forward for the base (4N) and the
adapters are negligible. Gradient-checkpointing recompute is not counted: this is model FLOPs
utilisation, not hardware FLOPs utilisation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Dense bf16 tensor-core peak (TFLOP/s) and memory bandwidth (TB/s) from the vendors' datasheets.
# Recorded beside the measured calibration peak, never used in its place.
DATASHEET = {
    "H200": (989.0, 4.8),
    "H100 NVL": (835.0, 3.9),
    "H100 PCIe": (756.0, 2.0),
    "H100": (989.0, 3.35),  # SXM
    "A100-SXM4-80GB": (312.0, 2.039),
    "A100-SXM4-40GB": (312.0, 1.555),
    "A100": (312.0, 1.935),
    "L40S": (362.0, 0.864),
    "A10G": (70.0, 0.6),
    "L4": (121.0, 0.3),
}


def datasheet_peak(gpu_name: str) -> tuple[float, float] | None:
    """(bf16 TFLOP/s, TB/s) for a GPU name, most specific match first; None when unknown."""
    for key in sorted(DATASHEET, key=len, reverse=True):
        # whole tokens only: "L4" must not match "NVIDIA L40", nor "H200" "NVIDIA GH200"
        if re.search(rf"(?<![0-9a-z]){re.escape(key)}(?![0-9a-z])", gpu_name, re.IGNORECASE):
            return DATASHEET[key]
    return None


def matmul_params(config: Mapping[str, Any]) -> int:
    """N: parameters that take part in a matrix multiply per token (decoder layers + LM head); in a
    mixture of experts only the top-k routed experts (and the router) count."""
    from bench.plan.estimate.arch import arch_from_config

    return arch_from_config(config).active_matmul_params


def attention_flops_per_token(config: Mapping[str, Any], seq: int) -> float:
    """Forward FLOPs per token of QKᵀ and AV at context length `seq`."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 4.0 * config["num_hidden_layers"] * heads * head_dim * seq


def flops_per_token(config: Mapping[str, Any], seq: int, workload: str, lora: bool = False) -> float:
    """Model FLOPs per token for prefill (one forward) or train (forward + backward)."""
    forward = 2.0 * matmul_params(config) + attention_flops_per_token(config, seq)
    if workload == "prefill":
        return forward
    if workload == "train":
        return forward * (2.0 if lora else 3.0)
    raise ValueError(f"no FLOPs model for workload {workload!r}")


def kv_cache_bytes_per_token(config: Mapping[str, Any], bytes_per_value: int) -> int:
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * kv * head_dim * bytes_per_value


def derive(
    record: Mapping[str, Any], model_config: Mapping[str, Any], calibration: Mapping[str, Any] | None
) -> dict[str, Any]:
    """MFU / MBU / FLOPs columns for an ok record; null with the reason where they cannot be had."""
    out: dict[str, Any] = {"params.matmul": matmul_params(model_config)}
    seq, batch = record["seq"], record["batch"]
    mode = record.get("train_mode")  # records from before the train_mode knob: k-bit cells trained LoRA
    lora = mode == "lora" if mode is not None else record.get("quant", "none") != "none"
    for workload in ("prefill", "train"):
        out[f"{workload}.flops_per_token"] = flops_per_token(model_config, seq, workload, lora=lora)
    peak = (calibration or {}).get("matmul_bf16_tflops")
    bandwidth = (calibration or {}).get("copy_bandwidth_gbps")
    no_peak = (calibration or {}).get("reason") or "no calibration probe ran (it needs a CUDA GPU)"
    for workload in ("prefill", "train"):
        rate = record.get(f"{workload}.tokens_per_s")
        key = f"{workload}.mfu"
        if rate is None:
            out[key], out[f"{key}.reason"] = None, f"{workload} was not measured in this cell"
        elif not peak:
            out[key], out[f"{key}.reason"] = None, no_peak
        else:
            out[key] = rate * out[f"{workload}.flops_per_token"] / (peak * 1e12)
    tpot = record.get("decode.tpot_s")
    if tpot is None:
        out["decode.mbu"], out["decode.mbu.reason"] = None, "decode time per output token was not measured"
    elif not record.get("decode.use_cache", True):
        out["decode.mbu"] = None
        out["decode.mbu.reason"] = (
            "use_cache is off: each step recomputes the whole context, so it is not bandwidth-bound"
        )
    elif not bandwidth:
        out["decode.mbu"], out["decode.mbu.reason"] = None, no_peak
    else:
        ctx = seq + record["new_tokens"] / 2  # mean context over the generated tokens
        value_bytes = 4 if record.get("dtype_resolved") == "float32" else 2
        kv = kv_cache_bytes_per_token(model_config, value_bytes) * ctx * batch
        bytes_per_step = record["mem.footprint_bytes"] + kv
        out["decode.mbu"] = bytes_per_step / tpot / (bandwidth * 1e9)
    return out
