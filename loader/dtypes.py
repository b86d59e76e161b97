"""dtype names -> torch dtypes, and what "auto" means for a given checkpoint."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loader.errors import bad_value

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANT_STORAGE = ("uint8", "float16", "bfloat16", "float32")
_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def normalize_dtype(value: object, field: str = "dtype", allowed: tuple[str, ...] = DTYPES) -> str:
    """Accept the spellings recipes use (None, 'bf16', torch.bfloat16) and return a canonical name."""
    if value is None:
        return "auto"
    name = str(value).removeprefix("torch.")
    name = _ALIASES.get(name, name)
    if name not in allowed:
        raise bad_value(field, value, allowed)
    return name


def checkpoint_dtype(config_dir: Path) -> str:
    """The dtype a checkpoint declares in config.json (what transformers' "auto" loads).

    transformers 5 writes `dtype`, older checkpoints `torch_dtype`; a checkpoint that declares
    neither loads in float32.
    """
    try:
        cfg = json.loads((config_dir / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    return config_dtype(cfg)


def config_dtype(cfg: Mapping[str, Any]) -> str:
    """The dtype a config.json dict declares (`dtype`, else `torch_dtype`), float32 when neither."""
    declared = cfg.get("dtype") or cfg.get("torch_dtype")
    try:
        resolved = normalize_dtype(declared)
    except ValueError:
        return "float32"
    return "float32" if resolved == "auto" else resolved


def resolve_dtype(name: str, config_dir: Path | None) -> str:
    """Resolve "auto" against the checkpoint's config.json; other names pass through.

    `config_dir` None means a hub model that is not cached yet (downloads allowed): "auto" stays
    "auto" there, and transformers resolves it while loading.
    """
    if name != "auto" or config_dir is None:
        return name
    return checkpoint_dtype(config_dir)


def to_torch(name: str) -> torch.dtype:
    """A resolved dtype name as a torch dtype; refuses "auto" so it never reaches getattr(torch, ...)."""
    import torch

    if name == "auto" or name not in (*DTYPES, "uint8"):
        raise bad_value("dtype", name, [d for d in DTYPES if d != "auto"])
    return getattr(torch, name)
