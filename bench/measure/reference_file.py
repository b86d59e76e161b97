"""The quality reference's knobs and its cached file, read without torch (bench.measure.quality writes it).

The run's parent process needs both, and never imports torch: it names the reference cell in its progress
line, and finds a reference already cached for the checkpoint without starting a worker. The file is
safetensors: an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape and byte
offsets, and `__metadata__`), then the tensor bytes. `cached_reference` accepts a file only when
safetensors itself would open it (header and sizes consistent, nothing missing) and its metadata names
the same checkpoint fingerprint, knobs and length that `compute_reference` would compute now; anything
else is left to the worker, which recomputes (or says why it cannot).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "FORMAT_VERSION",
    "META_KEY",
    "REFERENCE",
    "cached_reference",
    "read_header",
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
_MAX_HEADER = 100_000_000  # safetensors' own limit on the header's length
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


def read_header(path: str | Path) -> dict[str, Any]:
    """A safetensors file's header, checked as safetensors checks it on open: the tensors' byte ranges
    are contiguous from 0, each the size of its dtype and shape, and end exactly at the end of the file.
    ValueError when they do not (a truncated or foreign file), OSError when it cannot be read."""
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ValueError(f"{str(path)!r} is too short to be safetensors.")
        (length,) = struct.unpack("<Q", head)
        size = path.stat().st_size
        if length > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{str(path)!r} has a header length ({length}) past its end.")
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{str(path)!r} has no JSON header: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{str(path)!r} has a header that is not a JSON object.")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or info.get("dtype") not in _DTYPE_BYTES:
            raise ValueError(f"{str(path)!r}: tensor {name!r} has no known dtype.")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ValueError(f"{str(path)!r}: tensor {name!r} has no valid shape.")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"{str(path)!r}: tensor {name!r} has no valid data_offsets.")
        if offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_BYTES[info["dtype"]]:
            raise ValueError(f"{str(path)!r}: tensor {name!r} does not fill its byte range.")
        spans.append((offsets[0], offsets[1]))
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            raise ValueError(f"{str(path)!r}: the tensors' byte ranges are not contiguous.")
        end = stop
    if 8 + length + end != size:
        raise ValueError(f"{str(path)!r} is {size} bytes, but its header describes {8 + length + end}.")
    return header


def reference_meta(path: str | Path, header: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metadata `save_reference` put in a reference file's header (read from `path` unless given);
    ValueError when it has none."""
    header = read_header(path) if header is None else header
    raw = (header.get("__metadata__") or {}).get(META_KEY)
    if not isinstance(raw, str):
        raise ValueError(f"{str(path)!r} is not a loadbench quality reference (no metadata).")
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError(f"{str(path)!r} has reference metadata that is not a JSON object.")
    return meta


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
        header = read_header(path)
        meta = reference_meta(path, header)
    except (OSError, ValueError, KeyError):  # CheckpointError is a ValueError: the worker says why
        return None
    lp = header.get("logprobs")
    if {k: meta.get(k) for k in want} != want or not (isinstance(lp, dict) and len(lp["shape"]) == 2):
        return None
    return {
        "path": str(path),
        "seconds": perf_counter() - start,
        "tokens": meta.get("tokens"),
        "knobs": meta.get("knobs"),
    }
