"""The shapes the memory estimate reads: a Llama/Qwen2-style decoder's Arch, from a config or a preset."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import CheckpointError
from bench.plan.checkpoints import load_preset, read_json

__all__ = ["DTYPE_BYTES", "LORA_RANK", "Arch", "arch_from_config", "config_for"]

LORA_RANK = 8  # bench.measure.workloads.attach_lora
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


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
    """An Arch from a transformers config.json dict (Llama, Qwen2, SmolLM and their kin); a missing or
    wrong-typed size field is one sentence naming it (CheckpointError), not a bare int() error."""
    for name in (
        "hidden_size",
        "num_attention_heads",
        "num_hidden_layers",
        "intermediate_size",
        "vocab_size",
    ):
        value = config.get(name) if isinstance(config, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"config.json field {name}={value!r} must be a positive whole number.")
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
        dtype=dtype if dtype in DTYPE_BYTES else "float32",
    )


@functools.lru_cache(maxsize=64)
def _preset_arch(name: str) -> Arch:
    return arch_from_config(load_preset(name))


def config_for(model: str | Path) -> Arch:
    """The Arch of a model: an architecture preset name, a checkpoint directory or a config.json."""
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return arch_from_config(read_json(path))
    return _preset_arch(str(model))
