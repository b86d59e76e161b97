"""What one probe of a host found (`Capabilities`), and which matrix knob values can run given it.

The knob rows ask the loader's own checks (loader.support), so `loadbench env`, the planner and the
loader give the same sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from bench.plan.decode_modes import decode_unsupported_reason
from bench.plan.spec import ATTN_VARIANTS
from bench.schema import DECODE_MODES
from loader.attention import attention_unsupported_reason
from loader.config import LoadConfig
from loader.dtypes import DTYPES
from loader.host import HostCapabilities
from loader.quantization import METHODS, quantization_unsupported_reason
from loader.support import unsupported_reason

__all__ = ["Capabilities", "knob_support"]

_PROBE_MODEL = "loadbench/capability-probe"  # placeholder: knob checks never read the checkpoint


@dataclass(frozen=True)
class Capabilities:
    """One probe of this host; `host` is the loader's record, the rest is for people and records."""

    host: HostCapabilities
    cpu_model: str
    cpu_cores_physical: int | None
    cpu_cores_logical: int
    cpu_flags: tuple[str, ...]
    memory_bytes: int
    nvml: bool
    nvml_error: str | None
    driver_version: str | None
    cuda_driver_version: str | None
    gpus_detail: tuple[dict[str, Any], ...] = field(hash=False)
    bitsandbytes_backend: str | None
    peft_version: str | None
    torch_version: str | None
    transformers_version: str | None
    accelerate_version: str | None
    flash_attn_version: str | None
    flash_attn_3: bool
    python_version: str
    platform: str
    hostname: str
    torch_cuda_version: str | None = None  # CUDA runtime torch was built for (None: CPU build)
    torch_cpu_capability: str | None = None  # torch's CPU kernel level, e.g. "AVX512"
    torch_num_threads: int | None = None  # torch's default intra-op threads in a fresh process

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the loader's record nested under "host", everything else flat."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["host"] = json.loads(json.dumps(self.host.to_dict()))
        data["cpu_flags"] = list(self.cpu_flags)
        data["gpus_detail"] = [dict(g) for g in self.gpus_detail]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Capabilities:
        """Inverse of `to_dict`; unknown keys (from newer writers) are ignored."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["host"] = HostCapabilities.from_dict(data.get("host", {}))
        kwargs["cpu_flags"] = tuple(data.get("cpu_flags", ()))
        kwargs["gpus_detail"] = tuple(dict(g) for g in data.get("gpus_detail", ()))
        return cls(**kwargs)


def _row(knob: str, value: str, reason: str | None) -> dict[str, Any]:
    return {"knob": knob, "value": value, "ok": reason is None, "reason": reason}


def _half_dtype(host: HostCapabilities) -> str:
    """The half dtype flash rows are judged with: bfloat16 unless the first GPU lacks it."""
    return "float16" if host.cuda and not host.gpus[0].bf16 else "bfloat16"


def knob_support(caps: Capabilities) -> list[dict[str, Any]]:
    """Every matrix-axis knob value: {"knob", "value", "ok", "reason"}, reasons in the loader's words.

    Each row isolates its knob (the others at their defaults), so a T4's missing bf16 shows on the
    dtype row only; attention rows use a half dtype the host can run.
    """
    host = caps.host
    rows = []
    for dtype in (d for d in DTYPES if d != "auto"):
        config = LoadConfig(_PROBE_MODEL, dtype=dtype)
        rows.append(_row("dtype", dtype, unsupported_reason(config, host, dtype=dtype)))
    quant: dict[str, dict[str, Any]] = {
        "none": {},
        "bnb-8bit": {"quantization": "bnb-8bit"},
        "bnb-4bit-nf4": {"quantization": "bnb-4bit", "bnb_4bit_quant_type": "nf4"},
        "bnb-4bit-fp4": {"quantization": "bnb-4bit", "bnb_4bit_quant_type": "fp4"},
        "bnb-4bit-nf4-dq": {"quantization": "bnb-4bit", "bnb_4bit_use_double_quant": True},
    }
    quant.update({name: {"quantization": name} for name in METHODS})
    for value, knobs in quant.items():
        config = LoadConfig(_PROBE_MODEL, **knobs)
        reason = quantization_unsupported_reason(config.quantization, host, _half_dtype(host))
        rows.append(_row("quantization", value, reason))
    half = _half_dtype(host)
    attention = [(a, False) for a in ATTN_VARIANTS] + [("flex_attention", True)]
    for attn, training in attention:
        config = LoadConfig(_PROBE_MODEL, **ATTN_VARIANTS[attn])
        value = f"{attn} (training)" if training else attn
        reason = attention_unsupported_reason(
            config.attn_implementation, half, host, training=training, sdpa_backend=config.sdpa_backend
        )
        rows.append(_row("attention", value, reason))
    for mode in DECODE_MODES:
        reason = decode_unsupported_reason(mode, decodes=True, use_cache=True, quantization="none", caps=host)
        rows.append(_row("decode", mode, reason))
    for device in ("cpu", "cuda"):
        config = LoadConfig(_PROBE_MODEL, device=device)
        rows.append(_row("device", device, unsupported_reason(config, host, dtype="float32")))
    return rows
