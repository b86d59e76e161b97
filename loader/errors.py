"""Errors the loader raises: each carries one sentence a user can act on."""

from __future__ import annotations

from collections.abc import Iterable


class LoadConfigError(ValueError):
    """A knob value, a recipe or a checkpoint that cannot be loaded as asked."""


class UnsupportedOnHost(LoadConfigError):
    """A valid configuration that this host (its GPU, packages or libraries) cannot run."""


class QuantizationRefused(UnsupportedOnHost):
    """The quantization library (or transformers' quantizer for it) refused the config while loading."""


class CheckpointInvalid(LoadConfigError):
    """The model path is missing, has no config.json, or holds a corrupt weights file."""


class ModelLoadError(LoadConfigError):
    """transformers refused a configuration that our checks let through; names the config."""


def bad_value(field: str, value: object, allowed: Iterable[object]) -> LoadConfigError:
    """The one sentence for a knob outside its allowed values."""
    allowed_txt = ", ".join(repr(a) for a in allowed)
    return LoadConfigError(f"{field}={value!r} is not allowed; use one of: {allowed_txt}.")
