"""The estimate for any resolvable model, mixtures of experts included (issue 11, item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.measure.derived import matmul_params
from bench.plan.estimate.arch import arch_from_config
from bench.plan.estimate.terms import weight_bytes
from tests.hf_cache import TINY_CONFIGS, add_snapshot

MIXTRAL = {
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": 512,
}


@pytest.mark.parametrize("config", [*TINY_CONFIGS.values(), MIXTRAL], ids=[*TINY_CONFIGS, "mixtral"])
def test_parameter_count_matches_the_model_transformers_builds(config) -> None:
    """All experts are weights: the Arch's count equals the meta-device model's, MoE or dense."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "architectures"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert arch_from_config(config).params == sum(p.numel() for p in model.parameters())


def test_moe_weights_hold_every_expert_and_flops_count_the_routed_ones() -> None:
    moe = arch_from_config(TINY_CONFIGS["qwen3_moe"])
    h, e, k, i = 64, 4, 2, 32
    assert (moe.experts, moe.top_k, moe.expert_inter, moe.moe_layers) == (e, k, i, 2)
    assert moe.expert_params == 2 * e * (3 * h * i + h)
    assert weight_bytes(moe, "bfloat16", "none") == 2 * moe.params + moe.buffer_bytes
    # nf4 quantizes nn.Linear only: the experts (3-D parameters) stay in the compute dtype
    assert weight_bytes(moe, "bfloat16", "nf4") > 2 * moe.expert_params
    active = matmul_params(TINY_CONFIGS["qwen3_moe"])
    assert active == moe.linear_params + 2 * (k * 3 * h * i + h * e) + 512 * h
    assert active < moe.params  # only top-k of the experts compute per token
    assert moe.act_inter == k * i and any("not modelled" in n for n in moe.unmodelled)


def test_dense_models_keep_their_numbers() -> None:
    """N for a dense model is still layers·(attention + 3·h·inter) + vocab·h."""
    c = TINY_CONFIGS["llama"]
    h, heads, kv, layers, inter = 64, 4, 2, 2, 128
    hd = h // heads
    expected = layers * (h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter) + 512 * h
    assert matmul_params(c) == expected and arch_from_config(c).unmodelled == ()


def test_estimate_takes_a_hub_id_from_the_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("LOADBENCH_CACHE", str(tmp_path / "lb"))
    add_snapshot(tmp_path, "Qwen/tiny-moe", {"config.json": TINY_CONFIGS["qwen3_moe"]})
    assert main(["estimate", "--model", "Qwen/tiny-moe", "--vram", "1GiB", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Qwen/tiny-moe: predicted peak memory" in out and "not modelled: MoE routing" in out
    assert main(["estimate", "--model", "Qwen/absent"]) == 2
    assert "hf download Qwen/absent config.json" in capsys.readouterr().err
    assert not (tmp_path / "lb").exists()
