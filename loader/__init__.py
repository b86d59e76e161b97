"""loadbench's core loader: open-r1's get_tokenizer / get_model, validated, on transformers 5.

The public names are imported on first use (PEP 562): bench's error classes derive from
loader.errors, and importing that one module must not cost every loader module's import time
(a synthetic checkpoint's cache hit is meant to take milliseconds).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from loader.errors import CheckpointInvalid, LoadConfigError, ModelLoadError, UnsupportedOnHost

if TYPE_CHECKING:
    from loader.config import LoadConfig, RecipeShape
    from loader.host import GpuInfo, HostCapabilities, current_host, probe_host
    from loader.model import get_model
    from loader.support import unsupported_reason
    from loader.tokenizer import get_tokenizer

__all__ = [
    "CheckpointInvalid",
    "GpuInfo",
    "HostCapabilities",
    "LoadConfig",
    "LoadConfigError",
    "ModelLoadError",
    "RecipeShape",
    "UnsupportedOnHost",
    "current_host",
    "get_model",
    "get_tokenizer",
    "probe_host",
    "unsupported_reason",
]

_LAZY = {
    "LoadConfig": "loader.config",
    "RecipeShape": "loader.config",
    "GpuInfo": "loader.host",
    "HostCapabilities": "loader.host",
    "current_host": "loader.host",
    "probe_host": "loader.host",
    "get_model": "loader.model",
    "unsupported_reason": "loader.support",
    "get_tokenizer": "loader.tokenizer",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loader' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
