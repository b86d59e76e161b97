"""get_model: open-r1's model step on transformers 5, with the host checked first."""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from loader.config import LoadConfig
from loader.dtypes import resolve_dtype, to_torch
from loader.errors import ModelLoadError, QuantizationRefused, UnsupportedOnHost
from loader.host import HostCapabilities, current_host
from loader.quantization import METHODS, quantization_config
from loader.support import unsupported_reason

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def target_device(config: LoadConfig, caps: HostCapabilities) -> str:
    """The device the model should end up on: "auto" is the current CUDA device, else the CPU."""
    if config.device == "auto":
        if not caps.cuda:
            return "cpu"
        import torch

        return f"cuda:{torch.cuda.current_device()}"
    return "cuda:0" if config.device == "cuda" else config.device


def device_map(config: LoadConfig, caps: HostCapabilities) -> dict[str, str] | None:
    """k-bit models load straight onto the current device (TRL's get_kbit_device_map); so do GPU runs."""
    device = target_device(config, caps)
    if config.kbit or device != "cpu":
        return {"": device}
    return None


def from_pretrained_kwargs(
    config: LoadConfig, caps: HostCapabilities, dtype: str | None = None
) -> dict[str, Any]:
    """The keyword arguments handed to AutoModelForCausalLM.from_pretrained (transformers 5 names).

    `dtype` is the resolved model dtype when the caller already has it (saves re-reading the files).
    """
    dtype = dtype or config.resolved_dtype
    return {
        "revision": config.revision,
        "trust_remote_code": config.trust_remote_code,
        "dtype": "auto" if dtype == "auto" else to_torch(dtype),
        "attn_implementation": config.attn_implementation,
        "use_cache": config.resolved_use_cache,
        "quantization_config": quantization_config(config, dtype),
        "device_map": device_map(config, caps),
        "local_files_only": config.local_files_only,
    }


def get_model(
    config: LoadConfig, caps: HostCapabilities | None = None, *, training: bool | None = None
) -> PreTrainedModel:
    """Load the model as open-r1 would, after checking this host can run the config.

    `training` (default: the config's gradient_checkpointing) adds the checks that only matter for a
    backward pass. Out-of-memory errors pass through unchanged so callers can tell them apart.
    """
    import torch
    from transformers import AutoModelForCausalLM

    caps = caps or current_host()
    dtype = resolve_dtype(config.dtype, config.config_dir)  # checks the files once
    reason = unsupported_reason(config, caps, training=bool(training), dtype=dtype)
    if reason:
        raise UnsupportedOnHost(reason)
    kwargs = from_pretrained_kwargs(config, caps, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(config.model_name_or_path, **kwargs)
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except (OSError, ValueError, RuntimeError, KeyError, ImportError, TypeError, AssertionError) as exc:
        refusal = quantizer_refusal(config, exc)
        if refusal:
            raise QuantizationRefused(refusal) from exc
        if isinstance(exc, AssertionError):
            raise
        knobs = ", ".join(f"{k}={v!r}" for k, v in config.knobs().items() if k != "model_name_or_path")
        raise ModelLoadError(
            f"transformers could not load {config.model_name_or_path!r} with {knobs}: {type(exc).__name__}: {exc}"
        ) from exc
    if config.gradient_checkpointing:
        enable_checkpointing(model, config.checkpointing_kwargs)
    return model


# Where a refusal comes from: transformers' quantizer for the method, its integration, or the library.
_QUANTIZER_CODE = ("/transformers/quantizers/", "/transformers/integrations/")


def quantizer_refusal(config: LoadConfig, exc: BaseException) -> str | None:
    """The sentence for a load that an on-the-fly quantizer refused (raised in its own code), else None.

    transformers checks the environment in the quantizer (HQQ refuses a CPU device map) and quantizes
    in the integration; what they raise is the library's answer about this config, not a bug here."""
    method = METHODS.get(config.quantization)
    if method is None:
        return None
    frames = [frame.filename.replace("\\", "/") for frame in traceback.extract_tb(exc.__traceback__)]
    # the library's own package (FineGrainedFP8 has none: it lives in transformers' integrations)
    where = (*_QUANTIZER_CODE, f"/{method.module.split('.')[0]}/") if method.library else _QUANTIZER_CODE
    if not any(w in f for f in frames for w in where):
        return None
    return f"transformers refused quantization={config.quantization!r}: {type(exc).__name__}: {exc}"


def enable_checkpointing(model: PreTrainedModel, kwargs: dict[str, Any] | None = None) -> None:
    """Turn on activation checkpointing with `kwargs` (default use_reentrant=False, as open-r1's recipes
    ask; a recipe's gradient_checkpointing_kwargs replace it).

    transformers 5.2x renamed gradient_checkpointing_enable to activation_checkpointing_enable and
    deprecated the old name; use whichever this version has.
    """
    kwargs = {"use_reentrant": False} if kwargs is None else kwargs
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def checkpointing_enabled(model: PreTrainedModel) -> bool:
    """Whether activation checkpointing is on, under either transformers spelling."""
    flag = getattr(type(model), "is_activation_checkpointing", None)
    return bool(model.is_activation_checkpointing if flag is not None else model.is_gradient_checkpointing)
