"""Matrix specs: what to measure, from a YAML file, a preset, a recipe or CLI flags, checked axis by axis.

A spec names values per axis (dtype, quantization, attention, gradient checkpointing, use_cache),
the workloads and one workload shape. bench.plan.cells expands it into cells and bench.plan.rules
marks each one run or skipped; bench.plan.matrix gathers the three for callers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import SpecError
from bench.schema import WORKLOADS
from loader import LoadConfig, RecipeShape
from loader.attention import ATTENTION
from loader.dtypes import DTYPES

__all__ = [
    "ATTN_VALUES",
    "CACHE_VALUES",
    "HUB_TO_PRESET",
    "LOAD_KNOBS",
    "MEASURE_VERSION",
    "PRESET_DIR",
    "QUANT_VARIANTS",
    "SHAPE_KNOBS",
    "WORKLOADS",
    "MatrixSpec",
    "Shape",
    "SpecError",
    "load_preset",
    "recipe_model",
]

# Bump when what a cell measures changes, so old records are not compared as if equal.
MEASURE_VERSION = 1
PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"

# matrix quantization value -> LoadConfig knobs
QUANT_VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"quantization": "none"},
    "nf4": {"quantization": "bnb-4bit", "bnb_4bit_quant_type": "nf4"},
    "fp4": {"quantization": "bnb-4bit", "bnb_4bit_quant_type": "fp4"},
    "nf4-dq": {"quantization": "bnb-4bit", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
    "fp4-dq": {"quantization": "bnb-4bit", "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": True},
    "8bit": {"quantization": "bnb-8bit"},
}
ATTN_VALUES = tuple(a for a in ATTENTION if a is not None)
CACHE_VALUES = ("auto", "on", "off")  # auto: off under checkpointing, on otherwise (open-r1)
# Knobs a spec may set once for every cell (handed to LoadConfig as they are).
LOAD_KNOBS = (
    "revision",
    "trust_remote_code",
    "bnb_4bit_quant_storage",
    "bnb_4bit_compute_dtype",
    "chat_template",
)

# Hub ids of recipes -> synthetic architecture presets of the same shape (no hub here).
HUB_TO_PRESET = {
    "qwen/qwen2.5-0.5b": "qwen2.5-0.5b",
    "qwen/qwen2.5-1.5b": "qwen2.5-1.5b",
    "qwen/qwen2.5-7b": "qwen2.5-7b",
    "meta-llama/llama-3.2-1b": "llama-3.2-1b",
    "huggingfacetb/smollm2-1.7b": "smollm2-1.7b",
}


@dataclass(frozen=True)
class Shape:
    """The workload shape: batch × seq tokens for prefill/train, new_tokens generated in decode."""

    batch: int = 1
    seq: int = 128
    new_tokens: int = 16


# The shape's knobs (record columns too): batch, seq, new_tokens.
SHAPE_KNOBS = tuple(f.name for f in dataclasses.fields(Shape))


@dataclass(frozen=True)
class MatrixSpec:
    """What to measure: a model and the values of each axis."""

    model: str = "tiny-llama"
    dtype: tuple[str, ...] = ("bfloat16",)
    quant: tuple[str, ...] = ("none",)
    attn: tuple[str, ...] = ("sdpa",)
    grad_ckpt: tuple[bool, ...] = (False,)
    use_cache: tuple[str, ...] = ("auto",)
    workloads: tuple[str, ...] = WORKLOADS
    shape: Shape = field(default_factory=Shape)
    threads: int = 1
    load: tuple[tuple[str, Any], ...] = ()
    vram_limit_bytes: int | None = None  # emulate a smaller GPU (or cap CPU memory); part of what is measured
    name: str = "custom"

    def __post_init__(self) -> None:
        _check_axis("dtype", self.dtype, DTYPES)
        _check_axis("quant", self.quant, tuple(QUANT_VARIANTS))
        _check_axis("attn", self.attn, ATTN_VALUES)
        _check_axis("grad_ckpt", self.grad_ckpt, (False, True))
        _check_axis("use_cache", self.use_cache, CACHE_VALUES)
        _check_axis("workloads", self.workloads, WORKLOADS)
        for name in SHAPE_KNOBS:
            value = getattr(self.shape, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"shape.{name}={value!r} must be a positive integer.")
        if self.vram_limit_bytes is not None and (
            not isinstance(self.vram_limit_bytes, int) or self.vram_limit_bytes <= 0
        ):
            raise SpecError(f"vram_limit_bytes={self.vram_limit_bytes!r} must be a positive number of bytes.")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise SpecError(f"threads={self.threads!r} must be a positive integer.")
        for key, _ in self.load:
            if key not in LOAD_KNOBS:
                raise SpecError(
                    f"load.{key} is not a knob a spec can set; use one of: {', '.join(LOAD_KNOBS)}."
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the spec as run.json stores it (load knobs as a mapping)."""
        out = dataclasses.asdict(self)
        out["load"] = dict(self.load)
        return out

    def spec_hash(self) -> str:
        """Identifies what is measured (the name is a label, not part of it)."""
        data = self.to_dict()
        data.pop("name")
        data["measure_version"] = MEASURE_VERSION
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def with_overrides(self, **changes: Any) -> MatrixSpec:
        """A copy with CLI overrides applied (None means "keep")."""
        shape_changes = {k: changes.pop(k) for k in SHAPE_KNOBS if k in changes}
        shape_changes = {k: v for k, v in shape_changes.items() if v is not None}
        changes = {k: _as_axis(k, v) for k, v in changes.items() if v is not None}
        if shape_changes:
            changes["shape"] = dataclasses.replace(self.shape, **shape_changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], name: str = "custom") -> MatrixSpec:
        """A spec from a parsed YAML mapping; unknown keys are one sentence, not silently ignored."""
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed, key=str)
        if unknown:
            raise SpecError(f"spec key {unknown[0]!r} is unknown; use: {', '.join(sorted(allowed))}.")
        _check_scalar_types(data)
        kwargs: dict[str, Any] = {k: _as_axis(k, v) for k, v in data.items() if k not in ("shape", "load")}
        if "shape" in data:
            shape = data["shape"]
            if not isinstance(shape, Mapping) or set(shape) - set(SHAPE_KNOBS):
                raise SpecError(f"shape must be a mapping with keys {', '.join(SHAPE_KNOBS)}.")
            kwargs["shape"] = Shape(**shape)
        if "load" in data:
            load = data["load"]
            if not isinstance(load, Mapping) or not all(isinstance(k, str) for k in load):
                raise SpecError(
                    f"load must be a mapping of knob names to values; use: {', '.join(LOAD_KNOBS)}."
                )
            kwargs["load"] = tuple(sorted(load.items()))
        kwargs.setdefault("name", name)
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> MatrixSpec:
        """A spec from a YAML file; its name is the file's stem. A file that cannot be used is one sentence."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise SpecError(f"spec {str(path)!r} cannot be read: {exc.strerror or exc}.") from None
        except yaml.YAMLError as exc:
            raise SpecError(f"spec {str(path)!r} is not valid YAML: {exc}") from None
        if not isinstance(data, Mapping):
            raise SpecError(f"spec {str(path)!r} must be a YAML mapping, not {type(data).__name__}.")
        return cls.from_mapping(data, name=path.stem)

    @classmethod
    def from_recipe(cls, recipe: str | Path) -> MatrixSpec:
        """One cell per recipe: its knobs and shape, on a synthetic checkpoint of its architecture."""
        config = LoadConfig.from_recipe(recipe)
        quant = "none"
        if config.quantization == "bnb-8bit":
            quant = "8bit"
        elif config.quantization == "bnb-4bit":
            quant = config.bnb_4bit_quant_type + ("-dq" if config.bnb_4bit_use_double_quant else "")
        # from_recipe always sets recipe_shape; a shape with nothing in it takes the spec's defaults
        shape = config.recipe_shape or RecipeShape(None, None, None)
        load = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
        if config.chat_template:
            load["chat_template"] = config.chat_template
        return cls(
            model=recipe_model(config.model_name_or_path),
            dtype=(config.dtype,),
            quant=(quant,),
            attn=(config.attn_implementation or "sdpa",),
            grad_ckpt=(config.gradient_checkpointing,),
            shape=Shape(batch=(shape.batch_size or 1), seq=(shape.seq_len or 128)),
            load=tuple(sorted(load.items())),
            name=Path(recipe).stem,
        )


def recipe_model(name: str) -> str:
    """A recipe's model: a local path as it is, a hub id as the synthetic preset of its architecture."""
    if Path(name).expanduser().exists():
        return name
    key = name.lower().removesuffix("-instruct")
    if key in HUB_TO_PRESET:
        return HUB_TO_PRESET[key]
    raise SpecError(
        f"recipe model {name!r} is not a local directory and has no synthetic preset; "
        f"known hub ids: {', '.join(sorted(HUB_TO_PRESET))}."
    )


def load_preset(name: str) -> MatrixSpec:
    """A matrix preset shipped in bench/presets/ (default, gpu, ...)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise SpecError(f"matrix preset {name!r} does not exist; use one of: {', '.join(names)}.")
    return MatrixSpec.from_yaml(path)


# Spec fields that hold one value, and the type that value must have (YAML may hand over anything).
_SCALARS: dict[str, tuple[type, str]] = {
    "model": (str, "an architecture preset name or a checkpoint directory, e.g. tiny-llama"),
    "name": (str, "a short label"),
    "threads": (int, "a whole number of at least 1"),
    "vram_limit_bytes": (int, "a whole number of bytes above 0"),
}


def _check_scalar_types(data: Mapping[str, Any]) -> None:
    """`model: [1, 2]` is a sentence naming the field, not a TypeError further down."""
    for key, (kind, what) in _SCALARS.items():
        value = data.get(key)
        if value is None and key == "vram_limit_bytes":
            continue
        if key in data and (not isinstance(value, kind) or isinstance(value, bool)):
            raise SpecError(f"spec {key}={value!r} must be {what}.")


def _as_axis(name: str, value: Any) -> Any:
    if name in ("model", "name", "threads", "vram_limit_bytes"):
        return value
    if name == "grad_ckpt":
        items = (
            value.split(",")
            if isinstance(value, str)
            else value
            if isinstance(value, (list, tuple))
            else [value]
        )
        return tuple(_as_bool(name, v) for v in items)
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise SpecError(f"{name}={value!r} must be a list of values.")


def _as_bool(name: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if isinstance(value, bool):
        return value
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise SpecError(f"{name}={value!r} is not allowed; use one of: 'off', 'on'.")


def _check_axis(name: str, values: Sequence[Any], allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if not values:
        raise SpecError(f"{name} has no values; use one or more of: {', '.join(map(repr, allowed))}.")
    for value in values:
        if value not in allowed:
            raise SpecError(
                f"{name}={value!r} is not allowed; use one or more of: {', '.join(map(repr, allowed))}."
            )
