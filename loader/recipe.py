"""open-r1 / TRL recipe YAML -> LoadConfig keyword arguments and the recipe's workload shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loader.errors import LoadConfigError

__all__ = ["RecipeShape", "read_recipe", "recipe_to_kwargs"]


@dataclass(frozen=True)
class RecipeShape:
    """The workload shape a training recipe implies: per-device batch and sequence length."""

    batch_size: int | None
    seq_len: int | None
    seq_source: str | None  # which recipe keys gave seq_len


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
}


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


def _length(data: Mapping[str, Any], key: str) -> int:
    """A recipe's token length field: a positive whole number, else one sentence naming the field."""
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoadConfigError(f"recipe {key}={value!r} must be a positive whole number of tokens.")
    return value


def _shape(data: Mapping[str, Any]) -> RecipeShape:
    batch = data.get("per_device_train_batch_size")
    for key in ("max_seq_length", "max_length"):
        if data.get(key):
            return RecipeShape(batch, _length(data, key), key)
    if data.get("max_prompt_length") and data.get("max_completion_length"):
        seq = _length(data, "max_prompt_length") + _length(data, "max_completion_length")
        return RecipeShape(batch, seq, "max_prompt_length+max_completion_length")
    return RecipeShape(batch, None, None)


def recipe_to_kwargs(recipe: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], RecipeShape]:
    """LoadConfig keyword arguments and the RecipeShape for a recipe."""
    data = read_recipe(recipe)
    if "model_name_or_path" not in data:
        raise LoadConfigError("recipe has no model_name_or_path; every open-r1 recipe names its model.")
    kwargs: dict[str, Any] = {field: data[key] for key, field in _RENAMED.items() if key in data}
    if "dtype" in data and "torch_dtype" in data and data["dtype"] != data["torch_dtype"]:
        raise LoadConfigError(
            f"recipe sets dtype={data['dtype']!r} and torch_dtype={data['torch_dtype']!r}; keep one of them."
        )
    if "dtype" in data or "torch_dtype" in data:
        kwargs["dtype"] = data.get("dtype", data.get("torch_dtype"))
    four, eight = bool(data.get("load_in_4bit")), bool(data.get("load_in_8bit"))
    if four and eight:
        raise LoadConfigError(
            "recipe sets both load_in_4bit and load_in_8bit; bitsandbytes loads one of them."
        )
    kwargs["quantization"] = "bnb-4bit" if four else "bnb-8bit" if eight else "none"
    for key in ("trust_remote_code", "use_bnb_nested_quant", "gradient_checkpointing"):
        if data.get(key) is None and _RENAMED[key] in kwargs:
            del kwargs[_RENAMED[key]]  # YAML null means "default" in TRL
    return kwargs, _shape(data)
