"""bench.measure.derived: N from real transformers models, FLOPs by hand, MFU / MBU, datasheet lookup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.measure.derived import (
    attention_flops_per_token,
    datasheet_peak,
    derive,
    flops_per_token,
    kv_cache_bytes_per_token,
    matmul_params,
)

ARCH = Path(__file__).resolve().parents[1] / "bench" / "presets" / "arch"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def preset(name: str) -> dict[str, Any]:
    return json.loads((ARCH / f"{name}.json").read_text())


def build(config: dict[str, Any], meta: bool = False) -> Any:
    """A real CausalLM from a config.json dict (random weights, or shapes only on the meta device)."""
    kwargs = dict(config)
    cfg = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    if meta:
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(cfg)
    return transformers.AutoModelForCausalLM.from_config(cfg)


def linear_weights(model: Any) -> int:
    """Every nn.Linear weight (the LM head included, tied or not); biases and embeddings excluded."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def attention_geometry(model: Any) -> tuple[int, int, int]:
    """(layers, query heads, head dim) read off the built model's modules, not its config."""
    layers = model.model.layers
    q_proj = layers[0].self_attn.q_proj
    o_proj = layers[0].self_attn.o_proj
    k_proj = layers[0].self_attn.k_proj
    # q_proj's out features are H·Dh; K has kv·Dh. With the config's H we get Dh from the weights.
    heads = model.config.num_attention_heads
    head_dim = q_proj.out_features // heads
    assert o_proj.in_features == heads * head_dim
    assert k_proj.out_features % head_dim == 0
    return len(layers), heads, head_dim


@pytest.fixture(scope="module")
def tiny_llama_model() -> Any:
    return build(preset("tiny-llama"))


# -- N ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_matmul_params_counts_the_linear_weights_of_the_real_model(name: str) -> None:
    config = preset(name)
    model = build(config)
    assert matmul_params(config) == linear_weights(model)


def test_tiny_llama_n_by_hand(tiny_llama_model: Any) -> None:
    # hidden 64, 4 heads of 16, 2 KV heads, intermediate 256, 2 layers, vocab 2048, untied head
    q = o = 64 * 64
    k = v = 64 * 2 * 16
    mlp = 3 * 64 * 256
    head = 2048 * 64
    assert linear_weights(tiny_llama_model) == 2 * (q + k + v + o + mlp) + head
    assert matmul_params(preset("tiny-llama")) == 2 * (q + k + v + o + mlp) + head


def test_tied_head_still_counts_as_a_matmul() -> None:
    config = preset("tiny-qwen2")
    assert config["tie_word_embeddings"] is True
    model = build(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert matmul_params(config) == linear_weights(model)
    # Qwen2's q/k/v biases exist but are not multiplies, so N left them out (equality above)
    biases = sum(
        m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None
    )
    assert biases > 0


def test_qwen2_5_1_5b_on_the_meta_device() -> None:
    config = preset("qwen2.5-1.5b")
    model = build(config, meta=True)
    assert next(model.parameters()).device.type == "meta"
    n = linear_weights(model)
    assert matmul_params(config) == n
    assert 1.4e9 < n < 1.7e9  # "1.5B" with its 233M-parameter head counted once


def test_explicit_head_dim_and_missing_kv_heads() -> None:
    # head_dim that is not hidden/heads (as Qwen3/Gemma do), and MHA by omission of num_key_value_heads
    config = preset("tiny-llama") | {"head_dim": 32}
    del config["num_key_value_heads"]
    model = build(config)
    assert model.model.layers[0].self_attn.q_proj.out_features == 4 * 32
    assert model.model.layers[0].self_attn.k_proj.out_features == 4 * 32
    assert matmul_params(config) == linear_weights(model)
    layers, heads, head_dim = attention_geometry(model)
    assert attention_flops_per_token(config, 100) == 4 * layers * heads * head_dim * 100


# -- FLOPs per token -------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [1, 128, 4096])
def test_flops_per_token_prefill_and_train(tiny_llama_model: Any, seq: int) -> None:
    config = preset("tiny-llama")
    n = linear_weights(tiny_llama_model)
    layers, heads, head_dim = attention_geometry(tiny_llama_model)
    # per token and layer: QKᵀ is Dh multiply-adds against each of seq keys per head, AV the same
    qk = 2 * heads * head_dim * seq
    av = 2 * heads * head_dim * seq
    prefill = 2 * n + layers * (qk + av)
    assert flops_per_token(config, seq, "prefill") == pytest.approx(prefill)
    assert flops_per_token(config, seq, "train") == pytest.approx(3 * prefill)
    assert flops_per_token(config, seq, "train", lora=True) == pytest.approx(2 * prefill)
    # LoRA changes nothing about a forward
    assert flops_per_token(config, seq, "prefill", lora=True) == pytest.approx(prefill)


def test_attention_grows_linearly_with_context() -> None:
    config = preset("qwen2.5-1.5b")
    a1, a2 = attention_flops_per_token(config, 1000), attention_flops_per_token(config, 2000)
    assert a2 == pytest.approx(2 * a1)
    # 28 layers x 12 heads x 128 dims x 4 FLOPs per key
    assert a1 == pytest.approx(28 * 12 * 128 * 4 * 1000)


def test_flops_for_an_unknown_workload_raise() -> None:
    with pytest.raises(ValueError, match="decode"):
        flops_per_token(preset("tiny-llama"), 16, "decode")


# -- derive ----------------------------------------------------------------------------------------


def _record(**extra: Any) -> dict[str, Any]:
    return {"seq": 128, "batch": 2, "quant": "none", "new_tokens": 32, **extra}


CAL = {"matmul_bf16_tflops": 400.0, "copy_bandwidth_gbps": 1500.0}


def test_derive_mfu_with_a_calibration(tiny_llama_model: Any) -> None:
    config = preset("tiny-llama")
    n = linear_weights(tiny_llama_model)
    layers, heads, head_dim = attention_geometry(tiny_llama_model)
    forward = 2 * n + 4 * layers * heads * head_dim * 128
    out = derive(_record(**{"prefill.tokens_per_s": 2.0e6, "train.tokens_per_s": 5.0e5}), config, CAL)
    assert out["params.matmul"] == n
    assert out["prefill.flops_per_token"] == pytest.approx(forward)
    assert out["train.flops_per_token"] == pytest.approx(3 * forward)
    assert out["prefill.mfu"] == pytest.approx(2.0e6 * forward / 400e12)
    assert out["train.mfu"] == pytest.approx(5.0e5 * 3 * forward / 400e12)
    assert "prefill.mfu.reason" not in out
    assert "train.mfu.reason" not in out


def test_derive_quantized_cells_count_lora_training(tiny_llama_model: Any) -> None:
    config = preset("tiny-llama")
    forward = flops_per_token(config, 128, "prefill")
    out = derive(_record(quant="nf4", **{"train.tokens_per_s": 1.0e5}), config, CAL)
    assert out["train.flops_per_token"] == pytest.approx(2 * forward)
    assert out["train.mfu"] == pytest.approx(1.0e5 * 2 * forward / 400e12)


def test_derive_mfu_is_null_with_the_calibration_reason() -> None:
    config = preset("tiny-llama")
    record = _record(**{"prefill.tokens_per_s": 1.0e5})
    reason = "the calibration probe needs a CUDA GPU; this run is CPU-only"
    out = derive(record, config, {"reason": reason})
    assert out["prefill.mfu"] is None
    assert out["prefill.mfu.reason"] == reason

    out = derive(record, config, None)
    assert out["prefill.mfu"] is None
    assert "calibration" in out["prefill.mfu.reason"]
    # FLOPs per token do not need a calibration
    assert out["prefill.flops_per_token"] > 0


def test_derive_mfu_for_an_unmeasured_workload() -> None:
    out = derive(_record(**{"prefill.tokens_per_s": 1.0e5}), preset("tiny-llama"), CAL)
    assert out["train.mfu"] is None
    assert "train was not measured" in out["train.mfu.reason"]
    assert out["prefill.mfu"] is not None


def test_decode_mbu_by_hand() -> None:
    config = preset("tiny-llama")
    footprint = 1_000_000
    tpot = 0.002
    out = derive(
        _record(**{"decode.tpot_s": tpot, "decode.use_cache": True, "mem.footprint_bytes": footprint}),
        config,
        CAL,
    )
    # bf16 cache: K and V, 2 layers x 2 KV heads x 16 dims x 2 bytes each = 256 bytes per token;
    # mean context over 32 new tokens after a 128-token prompt is 144; batch 2
    kv_bytes = 256 * 144 * 2
    assert kv_cache_bytes_per_token(config, 2) == 256
    assert out["decode.mbu"] == pytest.approx((footprint + kv_bytes) / tpot / 1500e9)


def test_decode_mbu_float32_cache_is_twice_as_big() -> None:
    config = preset("tiny-llama")
    base = _record(**{"decode.tpot_s": 0.001, "mem.footprint_bytes": 0})
    half = derive(base, config, CAL)["decode.mbu"]
    full = derive(base | {"dtype_resolved": "float32"}, config, CAL)["decode.mbu"]
    assert full == pytest.approx(2 * half)


def test_decode_mbu_is_null_without_the_cache() -> None:
    out = derive(
        _record(**{"decode.tpot_s": 0.01, "decode.use_cache": False, "mem.footprint_bytes": 1}),
        preset("tiny-llama"),
        CAL,
    )
    assert out["decode.mbu"] is None
    assert "use_cache" in out["decode.mbu.reason"]


def test_decode_mbu_null_reasons() -> None:
    config = preset("tiny-llama")
    out = derive(_record(), config, CAL)
    assert out["decode.mbu"] is None
    assert "not measured" in out["decode.mbu.reason"]

    reason = "no CUDA device"
    out = derive(_record(**{"decode.tpot_s": 0.01, "mem.footprint_bytes": 1}), config, {"reason": reason})
    assert out["decode.mbu"] is None
    assert out["decode.mbu.reason"] == reason


# -- datasheet -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # torch.cuda.get_device_name() spellings; values from NVIDIA's datasheets (dense bf16, HBM)
        ("NVIDIA H100 80GB HBM3", (989.0, 3.35)),  # SXM
        ("NVIDIA H100 PCIe", (756.0, 2.0)),
        ("nvidia h100 pcie", (756.0, 2.0)),
        ("NVIDIA H100 NVL", (835.0, 3.9)),
        ("NVIDIA H200", (989.0, 4.8)),
        ("NVIDIA A100-SXM4-40GB", (312.0, 1.555)),
        ("NVIDIA A100-SXM4-80GB", (312.0, 2.039)),
        ("NVIDIA A100 80GB PCIe", (312.0, 1.935)),
        ("NVIDIA L40S", (362.0, 0.864)),
        ("NVIDIA L4", (121.0, 0.3)),
        ("NVIDIA A10G", (70.0, 0.6)),
    ],
)
def test_datasheet_peak_most_specific_first(name: str, expected: tuple[float, float]) -> None:
    assert datasheet_peak(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "Tesla T4",
        "NVIDIA GeForce RTX 4090",
        "",
        "NVIDIA L40",  # not an L4: a substring match would say so
        "NVIDIA A10",  # not an A10G, nor an A100
    ],
)
def test_datasheet_peak_unknown_is_none(name: str) -> None:
    assert datasheet_peak(name) is None
