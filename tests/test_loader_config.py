"""LoadConfig validation and recipe parsing: every bad value is one sentence naming field and choices."""

from __future__ import annotations

import pytest

from loader import LoadConfig, LoadConfigError
from loader.recipe import read_recipe


@pytest.mark.parametrize(
    ("field", "value", "allowed_hint"),
    [
        ("dtype", "fp8", "'bfloat16'"),
        ("attn_implementation", "flash", "'flash_attention_2'"),
        ("quantization", "gptq", "'bnb-4bit'"),
        ("bnb_4bit_quant_type", "int4", "'nf4'"),
        ("bnb_4bit_quant_storage", "int8", "'uint8'"),
        ("bnb_4bit_compute_dtype", "float64", "'float32'"),
        ("trust_remote_code", "yes", "True"),
        ("gradient_checkpointing", 1, "False"),
        ("device", "tpu", "'cuda'"),
    ],
)
def test_bad_value_names_field_value_and_allowed(field: str, value: object, allowed_hint: str) -> None:
    with pytest.raises(LoadConfigError) as err:
        LoadConfig("some/model", **{field: value})
    msg = str(err.value)
    assert msg.startswith(f"{field}={value!r} is not allowed")
    assert allowed_hint in msg
    assert msg.count(".") >= 1 and "\n" not in msg


def test_use_cache_true_with_checkpointing_is_a_config_error() -> None:
    with pytest.raises(LoadConfigError, match="use_cache=True conflicts with gradient_checkpointing=True"):
        LoadConfig("m", gradient_checkpointing=True, use_cache=True)


def test_use_cache_derived_from_checkpointing() -> None:
    assert LoadConfig("m").resolved_use_cache is True
    assert LoadConfig("m", gradient_checkpointing=True).resolved_use_cache is False
    assert LoadConfig("m", use_cache=False).resolved_use_cache is False


def test_dtype_spellings_normalised() -> None:
    assert LoadConfig("m", dtype="bf16").dtype == "bfloat16"
    assert LoadConfig("m", dtype="torch.float16").dtype == "float16"
    assert LoadConfig("m", dtype=None).dtype == "auto"


def test_auto_dtype_resolves_from_checkpoint_and_compute_dtype_follows(tiny_llama, tmp_path) -> None:
    cfg = LoadConfig(str(tiny_llama), quantization="bnb-4bit")
    assert cfg.dtype == "auto"
    assert cfg.resolved_dtype == "float32"  # tiny-llama declares float32
    assert cfg.compute_dtype == "float32"  # never "auto"
    assert LoadConfig(str(tiny_llama), dtype="bfloat16").compute_dtype == "bfloat16"
    assert LoadConfig(str(tiny_llama), bnb_4bit_compute_dtype="float16").compute_dtype == "float16"


def test_qwen_grpo_recipe(recipes_dir) -> None:
    cfg = LoadConfig.from_recipe(recipes_dir / "Qwen2.5-1.5B-Instruct-grpo-config_demo.yaml")
    assert cfg.model_name_or_path == "Qwen/Qwen2.5-1.5B-Instruct"
    assert cfg.revision == "main"
    assert cfg.dtype == "bfloat16"
    assert cfg.attn_implementation == "flash_attention_2"
    assert cfg.gradient_checkpointing is True
    assert cfg.resolved_use_cache is False
    assert cfg.quantization == "none"
    assert cfg.trust_remote_code is False
    shape = cfg.recipe_shape
    assert (shape.batch_size, shape.seq_len) == (16, 512 + 1024)
    assert shape.seq_source == "max_prompt_length+max_completion_length"


def test_smollm_sft_recipe(recipes_dir) -> None:
    cfg = LoadConfig.from_recipe(recipes_dir / "SmolLM2-1.7B-Instruct-sft-config.yaml")
    assert cfg.model_name_or_path == "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    assert (cfg.dtype, cfg.attn_implementation, cfg.gradient_checkpointing) == ("bfloat16", "sdpa", True)
    assert (cfg.recipe_shape.batch_size, cfg.recipe_shape.seq_len) == (4, 8192)
    assert cfg.recipe_shape.seq_source == "max_seq_length"


def test_recipe_quantization_keys() -> None:
    base = {
        "model_name_or_path": "m",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "fp4",
        "use_bnb_nested_quant": True,
    }
    cfg = LoadConfig.from_recipe(
        {**base, "bnb_4bit_quant_storage": "bfloat16", "dtype": "float16", "learning_rate": 1e-5}
    )
    assert (cfg.quantization, cfg.bnb_4bit_quant_type, cfg.bnb_4bit_use_double_quant) == (
        "bnb-4bit",
        "fp4",
        True,
    )
    assert (cfg.bnb_4bit_quant_storage, cfg.dtype) == ("bfloat16", "float16")
    assert (
        LoadConfig.from_recipe({"model_name_or_path": "m", "load_in_8bit": True}).quantization == "bnb-8bit"
    )
    assert (
        LoadConfig.from_recipe({"model_name_or_path": "m", "max_length": 2048}).recipe_shape.seq_len == 2048
    )


def test_recipe_4bit_and_8bit_together_refused() -> None:
    with pytest.raises(LoadConfigError, match="both load_in_4bit and load_in_8bit"):
        LoadConfig.from_recipe({"model_name_or_path": "m", "load_in_4bit": True, "load_in_8bit": True})


def test_recipe_bad_values_still_name_the_field() -> None:
    with pytest.raises(LoadConfigError, match=r"^dtype='int8' is not allowed"):
        LoadConfig.from_recipe({"model_name_or_path": "m", "torch_dtype": "int8"})


def test_recipe_not_a_mapping(tmp_path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(LoadConfigError, match="must be a YAML mapping of keys to values, not list"):
        read_recipe(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(LoadConfigError, match="is not valid YAML"):
        LoadConfig.from_recipe(broken)
    with pytest.raises(LoadConfigError, match="cannot be read"):
        LoadConfig.from_recipe(tmp_path / "missing.yaml")


def test_recipe_yaml_is_safe_loaded(tmp_path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("model_name_or_path: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(LoadConfigError, match="not valid YAML"):
        LoadConfig.from_recipe(evil)


def test_trust_remote_code_never_implied(recipes_dir) -> None:
    for recipe in recipes_dir.glob("*.yaml"):
        if "vision_model: true" in recipe.read_text():  # refused outright: not a causal LM
            with pytest.raises(LoadConfigError, match="vision-language"):
                LoadConfig.from_recipe(recipe)
            continue
        assert LoadConfig.from_recipe(recipe).trust_remote_code is False
    assert LoadConfig("m").trust_remote_code is False
