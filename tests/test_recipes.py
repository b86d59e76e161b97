"""Recipes read strictly: every loading key open-r1 and TRL recipes use, each of the type TRL reads it as.

Fixtures are real open-r1 recipes (tests/data/recipes/README.md); variants change one key at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.plan.checkpoints import load_preset
from bench.plan.matrix import MatrixSpec
from loader import LoadConfig, LoadConfigError
from loader.recipe import LoraSettings

DATA = Path(__file__).resolve().parent / "data" / "recipes"


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((DATA / name).read_text())


# file -> (model, dtype, attn, grad_ckpt, batch, seq, seq_source)
FIXTURES = {
    "Mistral-Small-24B-Instruct-2501-sft-config_openr1_math.yaml": (
        "mistralai/Mistral-Small-24B-Instruct-2501",
        "bfloat16",
        "flash_attention_2",
        True,
        1,
        32768,
        "max_seq_length",
    ),
    "Qwen2.5-Math-7B-grpo-config_simple_rl.yaml": (
        "aidando73/Qwen-2.5-7B-Simple-RL-v2",
        "bfloat16",
        "flash_attention_2",
        True,
        16,
        650 + 1024,
        "max_prompt_length+max_completion_length",
    ),
    "Doge-20M-Instruct-sft-config_full.yaml": (
        "JingzeShi/Doge-20M-Instruct",
        "bfloat16",
        None,
        True,
        4,
        4096,
        "max_seq_length",
    ),
    "Qwen2.5-1.5B-Instruct-grpo-config_demo.yaml": (
        "Qwen/Qwen2.5-1.5B-Instruct",
        "bfloat16",
        "flash_attention_2",
        True,
        16,
        1536,
        "max_prompt_length+max_completion_length",
    ),
    "SmolLM2-1.7B-Instruct-sft-config.yaml": (
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        "bfloat16",
        "sdpa",
        True,
        4,
        8192,
        "max_seq_length",
    ),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_real_recipes_parse(name: str) -> None:
    model, dtype, attn, ckpt, batch, seq, source = FIXTURES[name]
    cfg = LoadConfig.from_recipe(DATA / name)
    assert (cfg.model_name_or_path, cfg.revision, cfg.dtype) == (model, "main", dtype)
    assert (cfg.attn_implementation, cfg.gradient_checkpointing, cfg.quantization) == (attn, ckpt, "none")
    assert cfg.checkpointing_kwargs == {"use_reentrant": False}
    assert cfg.trust_remote_code is False and cfg.use_peft is False and cfg.lora is None
    assert (cfg.recipe_shape.batch_size, cfg.recipe_shape.seq_len) == (batch, seq)
    assert cfg.recipe_shape.seq_source == source


def test_every_fixture_is_covered() -> None:
    names = {p.name for p in DATA.glob("*.yaml")}
    assert names == set(FIXTURES) | {"Qwen2.5-VL-3B-Instruct-sft-config_agent.yaml"}


def test_vision_language_recipe_is_one_sentence() -> None:
    with pytest.raises(LoadConfigError, match=r"vision_model: true .*not vision-language models\.$"):
        LoadConfig.from_recipe(DATA / "Qwen2.5-VL-3B-Instruct-sft-config_agent.yaml")


BASE = "SmolLM2-1.7B-Instruct-sft-config.yaml"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("load_in_4bit", "false"),  # today's bug: a non-empty string planned an nf4 cell
        ("load_in_8bit", "no"),
        ("trust_remote_code", "true"),
        ("use_bnb_nested_quant", 1),
        ("use_peft", "false"),
        ("gradient_checkpointing", "true"),
    ],
)
def test_a_quoted_boolean_names_its_key(key: str, value: Any) -> None:
    data = {**_load(BASE), key: value}
    with pytest.raises(
        LoadConfigError, match=rf"^recipe key {key}={value!r} is not a boolean; write true or false"
    ):
        LoadConfig.from_recipe(data)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_seq_length", "8192"),
        ("max_seq_length", 8192.5),
        ("max_length", 0),
        ("max_prompt_length", "512"),
        ("max_completion_length", 1.5e3),
        ("per_device_train_batch_size", True),
        ("lora_r", "16"),
        ("lora_alpha", -1),
    ],
)
def test_a_non_integer_length_names_its_key(key: str, value: Any) -> None:
    data = {**_load(BASE), key: value}
    with pytest.raises(LoadConfigError, match=rf"^recipe key {key}=.* must be a positive integer"):
        LoadConfig.from_recipe(data)


def test_other_field_types() -> None:
    base = _load(BASE)
    bad = [
        ({"torch_dtype": 16}, "recipe key torch_dtype=16 must be a non-empty string"),
        ({"chat_template": ["a"]}, "recipe key chat_template="),
        ({"lora_dropout": 1.5}, r"recipe key lora_dropout=1.5 must be a number in \[0, 1\)"),
        ({"lora_dropout": "0.1"}, "recipe key lora_dropout='0.1'"),
        ({"lora_target_modules": 7}, "recipe key lora_target_modules=7 must be a list"),
        ({"lora_target_modules": []}, "recipe key lora_target_modules=\\[\\]"),
        (
            {"gradient_checkpointing_kwargs": "use_reentrant"},
            "gradient_checkpointing_kwargs='use_reentrant' must be a mapping",
        ),
        (
            {"gradient_checkpointing_kwargs": {"use_reentrant": "false"}},
            "use_reentrant='false' is not a boolean",
        ),
        ({"max_length": 4096}, "recipe sets max_seq_length=8192 and max_length=4096; keep one"),
        ({"load_in_4bit": True, "load_in_8bit": True}, "both load_in_4bit and load_in_8bit"),
        ({"bnb_4bit_quant_type": "nf5", "load_in_4bit": True}, "bnb_4bit_quant_type='nf5' is not allowed"),
    ]
    for change, message in bad:
        with pytest.raises(LoadConfigError, match=message):
            LoadConfig.from_recipe({**base, **change})


def test_null_means_trls_default() -> None:
    cfg = LoadConfig.from_recipe(
        {**_load(BASE), "trust_remote_code": None, "load_in_4bit": None, "gradient_checkpointing": None}
    )
    assert (
        cfg.trust_remote_code is False and cfg.quantization == "none" and cfg.gradient_checkpointing is False
    )


def test_quantization_fields() -> None:
    base = _load(BASE)
    assert LoadConfig.from_recipe({**base, "load_in_4bit": False}).quantization == "none"
    cfg = LoadConfig.from_recipe(
        {
            **base,
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "fp4",
            "use_bnb_nested_quant": True,
            "bnb_4bit_quant_storage": "bfloat16",
        }
    )
    assert (cfg.quantization, cfg.bnb_4bit_quant_type, cfg.bnb_4bit_use_double_quant) == (
        "bnb-4bit",
        "fp4",
        True,
    )
    assert cfg.bnb_4bit_quant_storage == "bfloat16"
    assert LoadConfig.from_recipe({**base, "load_in_8bit": True}).quantization == "bnb-8bit"


def test_peft_fields_are_kept_on_the_config() -> None:
    base = _load(BASE)
    cfg = LoadConfig.from_recipe(
        {
            **base,
            "use_peft": True,
            "lora_r": 64,
            "lora_alpha": 128,
            "lora_dropout": 0.0,
            "lora_target_modules": ["q_proj", "v_proj"],
        }
    )
    assert cfg.use_peft is True
    assert cfg.lora == LoraSettings(r=64, alpha=128, dropout=0.0, target_modules=("q_proj", "v_proj"))
    defaults = LoadConfig.from_recipe({**base, "use_peft": True, "lora_target_modules": "all-linear"})
    assert defaults.lora == LoraSettings(16, 32, 0.05, "all-linear")  # TRL's ModelConfig defaults
    assert LoadConfig.from_recipe(base).lora is None


def test_lengths() -> None:
    base = {k: v for k, v in _load(BASE).items() if k != "max_seq_length"}
    assert LoadConfig.from_recipe({**base, "max_length": 2048}).recipe_shape.seq_len == 2048
    same = LoadConfig.from_recipe({**base, "max_length": 2048, "max_seq_length": 2048}).recipe_shape
    assert same.seq_len == 2048
    only = LoadConfig.from_recipe({**base, "max_completion_length": 1024}).recipe_shape
    assert only.seq_len == 512 + 1024
    assert only.seq_source == "max_prompt_length (TRL default 512)+max_completion_length"
    assert LoadConfig.from_recipe(base).recipe_shape.seq_len is None


def test_checkpointing_kwargs_reach_the_cell(tmp_path: Path) -> None:
    """use_reentrant: true (R1-Distill-Qwen3-8B's recipe) is what its cell checkpoints with; the default
    (false) adds nothing to the cell, so the cell ids of recipes that keep it stay as they were."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(load_preset("tiny-llama")))
    recipe = {**_load(BASE), "model_name_or_path": str(model)}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    default = MatrixSpec.from_recipe(path)
    assert "gradient_checkpointing_kwargs" not in dict(default.load)
    recipe["gradient_checkpointing_kwargs"] = {"use_reentrant": True}
    path.write_text(yaml.safe_dump(recipe))
    spec = MatrixSpec.from_recipe(path)
    assert dict(spec.load)["gradient_checkpointing_kwargs"] == (("use_reentrant", True),)
    assert spec.spec_hash() != default.spec_hash()
    cfg = LoadConfig(
        str(model), gradient_checkpointing=True, **{k: v for k, v in spec.load if k != "revision"}
    )
    assert cfg.checkpointing_kwargs == {"use_reentrant": True}
    # as a cell's JSON round trip gives it (pairs as lists)
    assert LoadConfig("m", gradient_checkpointing_kwargs=[["use_reentrant", True]]).checkpointing_kwargs == {
        "use_reentrant": True
    }
    recipe["load_in_4bit"] = "false"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(LoadConfigError, match="load_in_4bit='false' is not a boolean"):
        MatrixSpec.from_recipe(path)
