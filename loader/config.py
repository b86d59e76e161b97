"""LoadConfig: every knob that decides how a causal LM is loaded, validated on construction."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loader.attention import ATTENTION, SDPA_BACKENDS
from loader.dtypes import QUANT_STORAGE, normalize_dtype, resolve_dtype
from loader.errors import LoadConfigError, bad_value
from loader.files import model_config_dir
from loader.quantization import QUANT_TYPES, QUANTIZATION
from loader.recipe import LoraSettings, RecipeShape, recipe_to_kwargs

__all__ = ["LoadConfig", "LoraSettings", "RecipeShape"]

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_BOOL_FIELDS = (
    "trust_remote_code",
    "bnb_4bit_use_double_quant",
    "gradient_checkpointing",
    "local_files_only",
    "use_peft",
)
# What gradient checkpointing is enabled with unless a config says otherwise (open-r1's recipes).
DEFAULT_CHECKPOINTING_KWARGS = (("use_reentrant", False),)


@dataclass(frozen=True)
class LoadConfig:
    """How to load one model: open-r1's ModelConfig knobs, named as transformers 5 names them.

    Derived knobs: `use_cache` (None -> off under gradient checkpointing, on otherwise),
    `bnb_4bit_compute_dtype` (None -> the model dtype, "auto" resolved first) and the device map
    (k-bit models load onto the current device, as TRL's get_kbit_device_map did).
    """

    model_name_or_path: str
    revision: str = "main"
    trust_remote_code: bool = False
    dtype: str = "auto"
    attn_implementation: str | None = None
    # pin torch's sdpa to one kernel (math, flash, efficient, cudnn) around the model's calls: sdpa only;
    # transformers does not pin, so callers wrap their calls in loader.attention.sdpa_pin(sdpa_backend)
    sdpa_backend: str | None = None
    quantization: str = "none"
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = False
    bnb_4bit_quant_storage: str = "uint8"
    bnb_4bit_compute_dtype: str | None = None
    gradient_checkpointing: bool = False
    # kwargs for gradient_checkpointing_enable, as (key, value) pairs; None: use_reentrant=False
    gradient_checkpointing_kwargs: tuple[tuple[str, Any], ...] | None = None
    use_cache: bool | None = None
    chat_template: str | None = None
    device: str = "auto"
    local_files_only: bool = True
    use_peft: bool = False  # the recipe trains LoRA adapters (stored for the training mode; see `lora`)
    lora: LoraSettings | None = None  # the recipe's lora_* settings
    recipe_shape: RecipeShape | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model_name_or_path, (str, Path)) or not str(self.model_name_or_path):
            raise LoadConfigError("model_name_or_path must be a non-empty local path or hub id.")
        name = str(self.model_name_or_path)
        object.__setattr__(
            self, "model_name_or_path", str(Path(name).expanduser()) if name.startswith("~") else name
        )
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise bad_value(name, getattr(self, name), (True, False))
        if self.use_cache is not None and not isinstance(self.use_cache, bool):
            raise bad_value("use_cache", self.use_cache, (None, True, False))
        if not isinstance(self.revision, str) or not self.revision:
            raise LoadConfigError(f"revision={self.revision!r} must be a non-empty branch, tag or commit.")
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype))
        if self.attn_implementation not in ATTENTION:
            raise bad_value("attn_implementation", self.attn_implementation, ATTENTION)
        if self.sdpa_backend is not None:
            if self.sdpa_backend not in SDPA_BACKENDS:
                raise bad_value("sdpa_backend", self.sdpa_backend, (None, *SDPA_BACKENDS))
            if self.attn_implementation != "sdpa":
                raise LoadConfigError(
                    f"sdpa_backend={self.sdpa_backend!r} pins a kernel of torch's sdpa, but "
                    f"attn_implementation={self.attn_implementation!r}; set attn_implementation='sdpa'."
                )
        if self.quantization not in QUANTIZATION:
            raise bad_value("quantization", self.quantization, QUANTIZATION)
        if self.bnb_4bit_quant_type not in QUANT_TYPES:
            raise bad_value("bnb_4bit_quant_type", self.bnb_4bit_quant_type, QUANT_TYPES)
        storage = normalize_dtype(self.bnb_4bit_quant_storage, "bnb_4bit_quant_storage", QUANT_STORAGE)
        object.__setattr__(self, "bnb_4bit_quant_storage", storage)
        if self.bnb_4bit_compute_dtype is not None:
            compute = normalize_dtype(self.bnb_4bit_compute_dtype, "bnb_4bit_compute_dtype")
            object.__setattr__(self, "bnb_4bit_compute_dtype", compute)
        if self.gradient_checkpointing and self.use_cache:
            raise LoadConfigError(
                "use_cache=True conflicts with gradient_checkpointing=True: the KV cache is off under "
                "checkpointing (open-r1 rule); drop use_cache or set it to False."
            )
        if not _DEVICE.match(str(self.device)):
            raise bad_value("device", self.device, ("auto", "cpu", "cuda", "cuda:N"))
        if self.chat_template is not None and not isinstance(self.chat_template, str):
            raise LoadConfigError("chat_template must be a Jinja template string or None.")
        if self.gradient_checkpointing_kwargs is not None:
            object.__setattr__(
                self, "gradient_checkpointing_kwargs", _pairs(self.gradient_checkpointing_kwargs)
            )
        if self.lora is not None and not isinstance(self.lora, LoraSettings):
            raise LoadConfigError("lora must be a LoraSettings (the recipe's lora_* keys) or None.")

    @property
    def checkpointing_kwargs(self) -> dict[str, Any]:
        """What gradient_checkpointing_enable gets: the config's kwargs over use_reentrant=False."""
        return dict(DEFAULT_CHECKPOINTING_KWARGS) | dict(self.gradient_checkpointing_kwargs or ())

    # -- derived knobs -------------------------------------------------------------------------
    @property
    def resolved_use_cache(self) -> bool:
        """The KV cache setting handed to the model: off under gradient checkpointing."""
        return (not self.gradient_checkpointing) if self.use_cache is None else self.use_cache

    @property
    def resolved_dtype(self) -> str:
        """dtype with "auto" resolved against the checkpoint's config.json (float32 if undeclared)."""
        return resolve_dtype(self.dtype, self.config_dir)

    @property
    def compute_dtype(self) -> str:
        """The 4-bit compute dtype: explicit, else the model dtype; never "auto"."""
        if self.bnb_4bit_compute_dtype in (None, "auto"):
            return self.resolved_dtype
        return resolve_dtype(self.bnb_4bit_compute_dtype, self.config_dir)

    @property
    def config_dir(self) -> Path | None:
        """Where config.json lives (checked: exists, readable weights); None for an uncached hub id."""
        return model_config_dir(self.model_name_or_path, self.revision, self.local_files_only)

    @property
    def kbit(self) -> bool:
        return self.quantization != "none"

    def replace(self, **changes: Any) -> LoadConfig:
        """A copy with some knobs changed, validated again."""
        return dataclasses.replace(self, **changes)

    def knobs(self) -> dict[str, Any]:
        """The knobs as plain values (for records and error messages)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "recipe_shape"}
        out["use_cache"] = self.resolved_use_cache
        return out

    # -- recipes ---------------------------------------------------------------------------------
    @classmethod
    def from_recipe(cls, recipe: str | Path | Mapping[str, Any], **overrides: Any) -> LoadConfig:
        """Read an open-r1 / TRL recipe (YAML path or mapping) as it is; training-only keys are ignored."""
        kwargs, shape = recipe_to_kwargs(recipe)
        kwargs.update(overrides)
        return cls(**kwargs, recipe_shape=shape)


def _pairs(value: Any) -> tuple[tuple[str, Any], ...]:
    """gradient_checkpointing_kwargs as sorted (key, value) pairs, from a mapping or pairs (JSON lists)."""
    try:
        items = dict(value)
    except (TypeError, ValueError):
        raise LoadConfigError(
            f"gradient_checkpointing_kwargs={value!r} must be a mapping, e.g. {{'use_reentrant': False}}."
        ) from None
    if not all(isinstance(k, str) for k in items):
        raise LoadConfigError(f"gradient_checkpointing_kwargs={value!r} must have string keys.")
    if not isinstance(items.get("use_reentrant", False), bool):
        raise bad_value("gradient_checkpointing_kwargs.use_reentrant", items["use_reentrant"], (True, False))
    return tuple(sorted(items.items()))
