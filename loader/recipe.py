"""open-r1 / TRL recipe YAML -> LoadConfig keyword arguments and the recipe's workload shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loader.errors import LoadConfigError

__all__ = ["LoraSettings", "RecipeShape", "read_recipe", "recipe_to_kwargs"]


@dataclass(frozen=True)
class RecipeShape:
    """The workload shape a training recipe implies: per-device batch and sequence length."""

    batch_size: int | None
    seq_len: int | None
    seq_source: str | None  # which recipe keys gave seq_len


@dataclass(frozen=True)
class LoraSettings:
    """A recipe's LoRA adapters (TRL's ModelConfig lora_* fields, TRL's defaults where unset).

    Kept on LoadConfig for the training mode that trains them; today a cell's LoRA is
    bench.measure.workloads.attach_lora's.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] | str | None = None  # a list of module names, or e.g. "all-linear"


# recipe key -> LoadConfig field, for keys that only change name
_RENAMED = {
    "model_name_or_path": "model_name_or_path",
    "model_revision": "revision",
    "attn_implementation": "attn_implementation",
    "trust_remote_code": "trust_remote_code",
    "bnb_4bit_quant_type": "bnb_4bit_quant_type",
    "use_bnb_nested_quant": "bnb_4bit_use_double_quant",
    "bnb_4bit_quant_storage": "bnb_4bit_quant_storage",
    "gradient_checkpointing": "gradient_checkpointing",
    "chat_template": "chat_template",
    "use_peft": "use_peft",
}
# The loading keys, by the type a recipe must give them (YAML null means "TRL's default": absent).
BOOL_KEYS = (
    "trust_remote_code",
    "load_in_4bit",
    "load_in_8bit",
    "use_bnb_nested_quant",
    "use_peft",
    "gradient_checkpointing",
    "vision_model",
)
INT_KEYS = (
    "per_device_train_batch_size",
    "max_length",
    "max_seq_length",
    "max_prompt_length",
    "max_completion_length",
    "lora_r",
    "lora_alpha",
)
STR_KEYS = (
    "model_name_or_path",
    "model_revision",
    "torch_dtype",
    "dtype",
    "attn_implementation",
    "bnb_4bit_quant_type",
    "bnb_4bit_quant_storage",
    "chat_template",
)
# TRL GRPOConfig's defaults, used when a recipe gives only one of the two lengths.
GRPO_DEFAULT_LENGTHS = {"max_prompt_length": 512, "max_completion_length": 256}


def read_recipe(recipe: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    """The recipe as a mapping; YAML is parsed with safe_load (no arbitrary objects)."""
    if isinstance(recipe, Mapping):
        return recipe
    import yaml

    path = Path(recipe)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise LoadConfigError(f"recipe {str(path)!r} cannot be read: {exc.strerror or exc}.") from None
    except yaml.YAMLError as exc:
        raise LoadConfigError(f"recipe {str(path)!r} is not valid YAML: {exc}".rstrip(".") + ".") from None
    if not isinstance(data, Mapping):
        raise LoadConfigError(
            f"recipe {str(path)!r} must be a YAML mapping of keys to values, not {type(data).__name__}."
        )
    return data


def _check_types(data: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's loading keys, each of the type TRL reads it as; null keys dropped (TRL's default).

    A boolean quoted as a string ("false") or a length that is not an integer is one sentence naming
    the key: YAML's "false" is a non-empty string, which a truthiness test would read as true.
    """
    out = {k: v for k, v in data.items() if v is not None}
    for key in BOOL_KEYS:
        if key in out and not isinstance(out[key], bool):
            raise LoadConfigError(
                f"recipe key {key}={out[key]!r} is not a boolean; write true or false, unquoted."
            )
    for key in INT_KEYS:
        value = out.get(key)
        if key in out and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise LoadConfigError(f"recipe key {key}={value!r} must be a positive integer, unquoted.")
    for key in STR_KEYS:
        if key in out and (not isinstance(out[key], str) or not out[key]):
            raise LoadConfigError(f"recipe key {key}={out[key]!r} must be a non-empty string.")
    dropout = out.get("lora_dropout")
    if "lora_dropout" in out and (
        isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1
    ):
        raise LoadConfigError(f"recipe key lora_dropout={dropout!r} must be a number in [0, 1).")
    targets = out.get("lora_target_modules")
    if "lora_target_modules" in out and not (
        isinstance(targets, str)
        or (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets))
    ):
        raise LoadConfigError(
            f"recipe key lora_target_modules={targets!r} must be a list of module names or a string "
            "such as 'all-linear'."
        )
    kwargs = out.get("gradient_checkpointing_kwargs")
    if "gradient_checkpointing_kwargs" in out:
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise LoadConfigError(
                f"recipe key gradient_checkpointing_kwargs={kwargs!r} must be a mapping, "
                "e.g. {use_reentrant: false}."
            )
        if "use_reentrant" in kwargs and not isinstance(kwargs["use_reentrant"], bool):
            raise LoadConfigError(
                f"recipe key gradient_checkpointing_kwargs.use_reentrant={kwargs['use_reentrant']!r} "
                "is not a boolean; write true or false, unquoted."
            )
    return out


def _shape(data: Mapping[str, Any]) -> RecipeShape:
    batch = data.get("per_device_train_batch_size")
    given = [k for k in ("max_seq_length", "max_length") if k in data]
    if len(given) == 2 and data["max_seq_length"] != data["max_length"]:
        raise LoadConfigError(
            f"recipe sets max_seq_length={data['max_seq_length']} and max_length={data['max_length']}; "
            "keep one of them (TRL renamed max_seq_length to max_length)."
        )
    if given:
        return RecipeShape(batch, int(data[given[0]]), given[0])
    prompt, completion = data.get("max_prompt_length"), data.get("max_completion_length")
    if prompt or completion:
        parts = []
        for key, value in (("max_prompt_length", prompt), ("max_completion_length", completion)):
            parts.append(key if value else f"{key} (TRL default {GRPO_DEFAULT_LENGTHS[key]})")
        seq = (prompt or GRPO_DEFAULT_LENGTHS["max_prompt_length"]) + (
            completion or GRPO_DEFAULT_LENGTHS["max_completion_length"]
        )
        return RecipeShape(batch, seq, "+".join(parts))
    return RecipeShape(batch, None, None)


def _lora(data: Mapping[str, Any]) -> LoraSettings | None:
    """The recipe's LoRA settings when it uses or configures PEFT, else None."""
    keys = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
    if not data.get("use_peft") and not any(k in data for k in keys):
        return None
    default = LoraSettings()
    targets = data.get("lora_target_modules", default.target_modules)
    return LoraSettings(
        r=data.get("lora_r", default.r),
        alpha=data.get("lora_alpha", default.alpha),
        dropout=float(data.get("lora_dropout", default.dropout)),
        target_modules=tuple(targets) if isinstance(targets, list) else targets,
    )


def recipe_to_kwargs(recipe: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], RecipeShape]:
    """LoadConfig keyword arguments and the RecipeShape for a recipe, every loading key type-checked."""
    raw = read_recipe(recipe)
    data = _check_types(raw)
    if "model_name_or_path" not in data:  # absent, or null
        raise LoadConfigError("recipe has no model_name_or_path; every open-r1 recipe names its model.")
    if data.get("vision_model"):
        raise LoadConfigError(
            f"recipe sets vision_model: true for {data.get('model_name_or_path')!r}; loadbench measures "
            "causal language models (AutoModelForCausalLM), not vision-language models."
        )
    kwargs: dict[str, Any] = {field: data[key] for key, field in _RENAMED.items() if key in data}
    if "dtype" in data and "torch_dtype" in data and data["dtype"] != data["torch_dtype"]:
        raise LoadConfigError(
            f"recipe sets dtype={data['dtype']!r} and torch_dtype={data['torch_dtype']!r}; keep one of them."
        )
    if "dtype" in data or "torch_dtype" in data:
        kwargs["dtype"] = data.get("dtype", data.get("torch_dtype"))
    four, eight = data.get("load_in_4bit", False), data.get("load_in_8bit", False)
    if four and eight:
        raise LoadConfigError(
            "recipe sets both load_in_4bit and load_in_8bit; bitsandbytes loads one of them."
        )
    kwargs["quantization"] = "bnb-4bit" if four else "bnb-8bit" if eight else "none"
    if "gradient_checkpointing_kwargs" in data:
        kwargs["gradient_checkpointing_kwargs"] = dict(data["gradient_checkpointing_kwargs"])
    lora = _lora(data)
    if lora is not None:
        kwargs["lora"] = lora
    return kwargs, _shape(data)
