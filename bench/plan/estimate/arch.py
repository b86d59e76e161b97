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
    # Mixture of experts (Qwen2/3-MoE, Mixtral): experts per MoE layer, routed per token (top-k),
    # each expert's intermediate width, an always-on shared expert's width, and how many layers are MoE.
    experts: int = 0
    top_k: int = 0
    expert_inter: int = 0
    shared_inter: int = 0
    moe_layers: int = 0
    unmodelled: tuple[str, ...] = ()  # what the estimate leaves out for this architecture, in words
    qk_norm: bool = False  # Qwen3: an RMSNorm of head_dim on q and on k in every layer

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
    def linear_groups(self) -> tuple[tuple[int, tuple[tuple[int, int, bool], ...]], ...]:
        """(layer count, nn.Linear shapes): attention in every layer, the dense MLP in dense layers, the
        shared expert in MoE layers. Routed experts are 3-D parameters, not nn.Linear (transformers 5),
        so bitsandbytes does not quantize them and LoRA does not target them."""
        attn, mlp = self.linears[:4], self.linears[4:]
        h, s = self.hidden, self.shared_inter
        shared = ((h, s, False), (h, s, False), (s, h, False), (h, 1, False)) if s else ()
        return ((self.layers, attn), (self.layers - self.moe_layers, mlp), (self.moe_layers, shared))

    @functools.cached_property
    def linear_params(self) -> int:
        """Weights of all decoder linears (the quantizable part)."""
        return sum(n * sum(i * o for i, o, _ in group) for n, group in self.linear_groups)

    @property
    def expert_params(self) -> int:
        """Every routed expert's weights and the routers: all held in memory, whichever are routed."""
        return self.moe_layers * self.experts * (3 * self.hidden * self.expert_inter + self.hidden)

    @property
    def active_matmul_params(self) -> int:
        """N of the FLOPs: linears, the top-k routed experts and the router per token, and the LM head."""
        routed = self.moe_layers * (
            self.top_k * 3 * self.hidden * self.expert_inter + self.hidden * self.experts
        )
        return self.linear_params + routed + self.vocab * self.hidden

    @property
    def act_inter(self) -> int:
        """MLP intermediate width a token's activations have, averaged over layers (top-k experts + shared
        in MoE layers; the dense width elsewhere)."""
        moe = self.top_k * self.expert_inter + self.shared_inter
        return round(((self.layers - self.moe_layers) * self.inter + self.moe_layers * moe) / self.layers)

    @functools.cached_property
    def other_params(self) -> int:
        """Parameters bitsandbytes leaves in the compute dtype: embeddings, LM head, norms, biases,
        and the routed experts with their routers."""
        bias = sum(o for _, o, b in self.linears if b)
        per_layer = 2 * self.hidden + bias + (2 * self.head_dim if self.qk_norm else 0)
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + head + self.layers * per_layer + self.hidden + self.expert_params

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    @property
    def largest_param(self) -> int:
        fused = 2 * self.experts * self.expert_inter * self.hidden  # the experts' gate_up parameter
        return max(self.vocab * self.hidden, fused, *(i * o for i, o, _ in self.linears))

    @property
    def buffer_bytes(self) -> int:
        return 2 * (self.head_dim // 2) * 4  # rotary inv_freq and original_inv_freq, float32

    def lora_params(self, rank: int = LORA_RANK) -> int:
        return sum(n * sum(rank * (i + o) for i, o, _ in group) for n, group in self.linear_groups)


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
        inter=int(config.get("intermediate_size") or 0),
        vocab=int(config["vocab_size"]),
        # transformers' default differs by family: Gemma ties its embeddings unless told otherwise
        tied=bool(config.get("tie_word_embeddings", model_type.startswith("gemma"))),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        dtype=dtype if dtype in DTYPE_BYTES else "float32",
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
        **_moe(config),
    )


def _moe(config: Mapping[str, Any]) -> dict[str, Any]:
    """The mixture-of-experts fields of a config (Qwen2/3-MoE: num_experts, moe_intermediate_size,
    mlp_only_layers, decoder_sparse_step; Mixtral: num_local_experts with intermediate_size)."""
    layers = int(config["num_hidden_layers"])
    notes = []
    if config.get("kv_lora_rank") or config.get("n_routed_experts"):
        notes.append(
            "DeepSeek-style latent attention and routed experts are not modelled: the estimate reads "
            "this config as a dense decoder"
        )
    experts = int(config.get("num_experts") or config.get("num_local_experts") or 0)
    top_k = int(config.get("num_experts_per_tok") or 0)
    if not experts or not top_k:
        return {"unmodelled": tuple(notes)}
    dense_only = set(config.get("mlp_only_layers") or ())
    step = int(config.get("decoder_sparse_step") or 1)
    moe_layers = sum(1 for i in range(layers) if i not in dense_only and (i + 1) % step == 0)
    notes.append(
        "MoE routing temporaries (router logits, top-k indices and weights, each expert's token "
        "gather and scatter) are not modelled; all experts are in weight memory, the top-k routed ones "
        "in FLOPs and activations"
    )
    return {
        "experts": experts,
        "top_k": top_k,
        "expert_inter": int(config.get("moe_intermediate_size") or config["intermediate_size"]),
        "shared_inter": int(config.get("shared_expert_intermediate_size") or 0),
        "moe_layers": moe_layers,
        "unmodelled": tuple(notes),
    }


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
