"""loadbench's core loader: open-r1's get_tokenizer / get_model, validated, on transformers 5."""

from loader.config import LoadConfig, RecipeShape
from loader.errors import CheckpointInvalid, LoadConfigError, ModelLoadError, UnsupportedOnHost
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
