"""Matrix specs: what to measure, from a YAML file, a preset, a recipe or CLI flags, checked axis by axis.

A spec names values per axis (dtype, quantization, attention, gradient checkpointing, use_cache, decode mode),
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
from bench.schema import DECODE_MODES, FIND_MAX_TARGETS, TRAIN_MODES, WORKLOADS
from loader import LoadConfig, RecipeShape
from loader.attention import ATTENTION, KERNELS_FLASH, SDPA_BACKENDS
from loader.dtypes import DTYPES
from loader.quantization import METHODS

__all__ = [
    "ATTN_VALUES",
    "ATTN_VARIANTS",
    "CACHE_VALUES",
    "HUB_TO_PRESET",
    "LOAD_KNOBS",
    "LORA_DEFAULTS",
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
    # on-the-fly quantizers of transformers 5 (loader.quantization.METHODS): the value is the knob's
    **{name: {"quantization": name} for name in METHODS},
}
# matrix attention value -> LoadConfig knobs: transformers' own implementations as they are, sdpa pinned
# to one of torch's kernels ("sdpa:math"), and flash attention from the kernels hub ("kernels-flash")
ATTN_VARIANTS: dict[str, dict[str, Any]] = {
    **{a: {"attn_implementation": a} for a in ATTENTION if a is not None and a != KERNELS_FLASH},
    **{f"sdpa:{b}": {"attn_implementation": "sdpa", "sdpa_backend": b} for b in SDPA_BACKENDS},
    "kernels-flash": {"attn_implementation": KERNELS_FLASH},
}
ATTN_VALUES = tuple(ATTN_VARIANTS)
CACHE_VALUES = ("auto", "on", "off")  # auto: off under checkpointing, on otherwise (open-r1)
# Knobs a spec may set once for every cell (handed to LoadConfig as they are).
LOAD_KNOBS = (
    "revision",
    "trust_remote_code",
    "bnb_4bit_quant_storage",
    "bnb_4bit_compute_dtype",
    "chat_template",
    "gradient_checkpointing_kwargs",
)

# The one LoRA setting every train_mode=lora cell uses (bf16 + lora vs nf4 + lora is then the QLoRA
# comparison); a spec's `lora` mapping or a recipe's lora_r / lora_alpha / lora_dropout /
# lora_target_modules change it for the whole matrix.
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}
# Spec fields that are left out of the spec hash while they hold their default, so the hashes (and
# resumability) of specs written before them stay as they were.
_NEW_FIELDS_DEFAULTS: dict[str, Any] = {
    "train_mode": (),
    "lora": {},
    "find_max": None,
    "decode": ("dynamic",),
    "max_batch": None,
    "max_seq": None,
    "at_max": False,
}

# Hub ids of recipes -> built-in presets of the same shape: the resolver's not-found sentence offers them.
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
    decode: tuple[str, ...] = ("dynamic",)  # schema.DECODE_MODES
    workloads: tuple[str, ...] = WORKLOADS
    shape: Shape = field(default_factory=Shape)
    threads: int = 1
    load: tuple[tuple[str, Any], ...] = ()
    vram_limit_bytes: int | None = None  # emulate a smaller GPU (or cap CPU memory); part of what is measured
    name: str = "custom"
    train_mode: tuple[str, ...] = ()  # () = each quantization's default (schema.default_train_mode)
    lora: tuple[tuple[str, Any], ...] = ()  # overrides of LORA_DEFAULTS
    find_max: str | None = None  # "batch" | "seq": search the largest that fits instead of one shape
    max_batch: int | None = None  # the search's caps (None: 256 sequences, the model's context length)
    max_seq: int | None = None
    at_max: bool = False  # measure the workloads at the found shape
    weights: str = "auto"  # auto (real when the checkpoint has them) | real | random (bench.plan.models)

    def __post_init__(self) -> None:
        _check_axis("dtype", self.dtype, DTYPES)
        _check_axis("quant", self.quant, tuple(QUANT_VARIANTS))
        _check_axis("attn", self.attn, ATTN_VALUES)
        _check_axis("grad_ckpt", self.grad_ckpt, (False, True))
        _check_axis("use_cache", self.use_cache, CACHE_VALUES)
        _check_axis("decode", self.decode, DECODE_MODES)
        _check_axis("workloads", self.workloads, WORKLOADS)
        for name in SHAPE_KNOBS:
            value = getattr(self.shape, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"shape.{name}={value!r} must be a positive integer.")
        if self.vram_limit_bytes is not None and (
            not isinstance(self.vram_limit_bytes, int) or self.vram_limit_bytes <= 0
        ):
            raise SpecError(f"vram_limit_bytes={self.vram_limit_bytes!r} must be a positive number of bytes.")
        if self.train_mode:
            _check_axis("train_mode", self.train_mode, TRAIN_MODES)
        for key, _ in self.lora:
            if key not in LORA_DEFAULTS:
                raise SpecError(f"lora.{key} is not a LoRA setting; use one of: {', '.join(LORA_DEFAULTS)}.")
        if self.find_max is not None and self.find_max not in FIND_MAX_TARGETS:
            raise SpecError(f"find_max={self.find_max!r} is not allowed; use one of: 'batch', 'seq'.")
        for cap in ("max_batch", "max_seq"):
            value = getattr(self, cap)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise SpecError(f"{cap}={value!r} must be a positive integer.")
        if self.at_max and self.find_max is None:
            raise SpecError("at_max needs find_max (batch or seq): there is no found shape to measure at.")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise SpecError(f"threads={self.threads!r} must be a positive integer.")
        if self.weights not in ("auto", "real", "random"):
            raise SpecError(f"weights={self.weights!r} is not allowed; use one of: 'auto', 'real', 'random'.")
        for key, _ in self.load:
            if key not in LOAD_KNOBS:
                raise SpecError(
                    f"load.{key} is not a knob a spec can set; use one of: {', '.join(LOAD_KNOBS)}."
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the spec as run.json stores it (load knobs as a mapping)."""
        out = dataclasses.asdict(self)
        out["load"] = dict(self.load)
        out["lora"] = dict(self.lora)
        if out["weights"] == "auto":  # absent when default, so spec hashes of earlier runs still match
            out.pop("weights")
        return out

    def spec_hash(self) -> str:
        """Identifies what is measured (the name is a label, not part of it)."""
        data = self.to_dict()
        data.pop("name")
        for key, default in _NEW_FIELDS_DEFAULTS.items():
            if data.get(key) == default or (key == "train_mode" and data.get(key) == []):
                data.pop(key, None)
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
        kwargs: dict[str, Any] = {
            k: _as_axis(k, v) for k, v in data.items() if k not in ("shape", "load", "lora")
        }
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
        if "lora" in data:
            if not isinstance(data["lora"], Mapping):
                raise SpecError(f"lora must be a mapping with keys {', '.join(LORA_DEFAULTS)}.")
            kwargs["lora"] = tuple(sorted(dict(data["lora"]).items()))
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
        elif config.quantization in METHODS:
            quant = config.quantization
        # from_recipe always sets recipe_shape; a shape with nothing in it takes the spec's defaults
        shape = config.recipe_shape or RecipeShape(None, None, None)
        load = {"revision": config.revision, "trust_remote_code": config.trust_remote_code}
        if config.chat_template:
            load["chat_template"] = config.chat_template
        mode, lora = recipe_lora(config)
        # only what differs from the defaults, so the cell ids of recipes that keep them stay as they were
        if config.checkpointing_kwargs != {"use_reentrant": False}:
            load["gradient_checkpointing_kwargs"] = config.gradient_checkpointing_kwargs
        if config.bnb_4bit_quant_storage != "uint8" and config.kbit:
            load["bnb_4bit_quant_storage"] = config.bnb_4bit_quant_storage
        return cls(
            model=recipe_model(config.model_name_or_path),
            dtype=(config.dtype,),
            quant=(quant,),
            attn=(attn_value(config),),
            grad_ckpt=(config.gradient_checkpointing,),
            shape=Shape(batch=(shape.batch_size or 1), seq=(shape.seq_len or 128)),
            load=tuple(sorted(load.items())),
            name=Path(recipe).stem,
            train_mode=mode,
            lora=lora,
        )


def attn_value(config: LoadConfig) -> str:
    """A loader config's attention as the matrix value that loads it ("sdpa" when it names none)."""
    knobs = {"attn_implementation": config.attn_implementation or "sdpa"}
    if config.sdpa_backend is not None:
        knobs["sdpa_backend"] = config.sdpa_backend
    return next(value for value, want in ATTN_VARIANTS.items() if want == knobs)


def recipe_lora(config: Any) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]:
    """A recipe's use_peft / lora_* fields as train_mode and lora settings.

    use_peft: true asks for lora; without it the quantization's default mode stands (full unquantized, lora
    k-bit), so recipes that say nothing keep their cell ids. lora_* (TRL's defaults where unset) set the adapters.
    """
    mode: tuple[str, ...] = ("lora",) if config.use_peft else ()
    settings = config.lora
    if settings is None:
        return mode, ()
    lora = {"r": settings.r, "alpha": settings.alpha, "dropout": settings.dropout}
    if settings.target_modules is not None:
        targets = settings.target_modules
        lora["target_modules"] = tuple(targets) if isinstance(targets, list) else targets
    return mode, tuple(sorted(lora.items()))


def recipe_model(name: str) -> str:
    """A recipe's model as the resolver takes it (bench.plan.models): a local path or a hub id, as given.

    Hub ids are no longer swapped for presets: the plan resolves them in the Hugging Face cache (or,
    with --online, fetches their config), and when that fails its sentence names the preset of the
    same shape (HUB_TO_PRESET) as one of the fixes.
    """
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"recipe model_name_or_path={name!r} must be a hub id or a local path.")
    return name


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
    if name in (
        "model",
        "name",
        "threads",
        "vram_limit_bytes",
        "find_max",
        "max_batch",
        "max_seq",
        "weights",
    ):
        return value
    if name == "at_max":
        return _as_bool(name, value)
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
