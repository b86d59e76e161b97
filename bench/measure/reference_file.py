"""The quality reference's knobs and its cached file, read without torch (bench.measure.quality writes it).

The run's parent process needs both, and never imports torch: it names the reference cell in its progress
line, and finds a reference already cached for the checkpoint without starting a worker. The file is
safetensors, opened here by safetensors itself with the numpy framework (no torch). `cached_reference`
accepts a file only when safetensors opens it (header and sizes consistent, nothing missing) and its metadata names
the same checkpoint fingerprint, knobs and length that `compute_reference` would compute now; anything
else is left to the worker, which recomputes (or says why it cannot).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "FORMAT_VERSION",
    "META_KEY",
    "REFERENCE",
    "cached_reference",
    "reference_meta",
    "wanted_meta",
]

FORMAT_VERSION = 1
META_KEY = "loadbench.quality"  # the safetensors metadata entry that holds the reference's JSON
DEFAULT_MAX_TOKENS = 2048
# Reference knobs per device type; change here (or pass `override`) to compare against another cell.
REFERENCE: dict[str, dict[str, Any]] = {
    "cpu": {"dtype": "float32", "quant": "none", "attn": "eager"},
    "cuda": {"dtype": "bfloat16", "quant": "none", "attn": "sdpa"},
}


def reference_meta(path: str | Path) -> tuple[dict[str, Any], list[int] | None]:
    """(the metadata `save_reference` put in a reference file, the shape of its log-probabilities), read by
    safetensors itself without torch (framework "numpy"), which refuses a truncated or foreign file on open.
    ValueError when it is not a loadbench reference; OSError when it cannot be read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
            names = fh.keys()  # a list: safe_open has no `in`
            shape = list(fh.get_slice("logprobs").get_shape()) if "logprobs" in names else None
    except SafetensorError as exc:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file: {exc}") from None
    if not isinstance(raw, str):
        raise ValueError(f"{str(path)!r} is not a loadbench quality reference (no metadata).")
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError(f"{str(path)!r} has reference metadata that is not a JSON object.")
    return meta, shape


def wanted_meta(fingerprint: str, knobs: Mapping[str, Any], max_tokens: int) -> dict[str, Any]:
    """What a cached reference's metadata must hold to be reused: the same checkpoint, knobs and length."""
    return {"fingerprint": fingerprint, "knobs": dict(knobs), "max_tokens": max_tokens}


def cached_reference(checkpoint: str | Path, device: str, path: str | Path) -> dict[str, Any] | None:
    """The answer `bench.measure.quality.reference_task` gives for a reference already cached at `path`
    ({"path", "seconds", "tokens", "knobs"}), found without torch; None when the file is missing, damaged
    or for another checkpoint, knobs or length (then the worker computes it, or says why it cannot)."""
    from time import perf_counter

    from bench.plan.checkpoints import checkpoint_fingerprint

    start = perf_counter()
    path = Path(path)
    if not path.is_file():
        return None
    try:
        want = wanted_meta(checkpoint_fingerprint(checkpoint), REFERENCE[device], DEFAULT_MAX_TOKENS)
        meta, shape = reference_meta(path)
    except (OSError, ValueError, KeyError):  # CheckpointError is a ValueError: the worker says why
        return None
    if {k: meta.get(k) for k in want} != want or shape is None or len(shape) != 2:
        return None
    return {
        "path": str(path),
        "seconds": perf_counter() - start,
        "tokens": meta.get("tokens"),
        "knobs": meta.get("knobs"),
    }
