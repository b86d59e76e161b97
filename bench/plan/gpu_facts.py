"""GPU facts from NVML, which never creates a CUDA context, filtered as CUDA_VISIBLE_DEVICES filters them.

bench.plan.capabilities probes with it; a missing library or driver is a reason in the facts, not an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["BF16_MIN_CC", "NvmlFacts", "nvml_facts", "visible_indices"]

BF16_MIN_CC = (8, 0)  # the rule loader.host.probe_host applies to torch's device properties


@dataclass(frozen=True)
class NvmlFacts:
    """What NVML says, already filtered to the GPUs CUDA_VISIBLE_DEVICES lets this process see."""

    ok: bool
    error: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: tuple[dict[str, Any], ...] = ()


def _text(value: Any) -> str:
    """NVML strings are bytes in old nvidia-ml-py releases and str in new ones."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _cuda_version_text(value: int) -> str:
    """NVML encodes CUDA versions as 1000*major + 10*minor (12040 -> "12.4")."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def _strtoul(text: str) -> int:
    """The leading decimal number of `text` (CUDA parses "1gpu" as 1), or -1."""
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else -1


def visible_indices(uuids: list[str], env: str | None) -> list[int]:
    """NVML indices of the GPUs CUDA_VISIBLE_DEVICES=`env` exposes, in CUDA's order.

    Mirrors CUDA's (and torch's NVML-based) parsing: ordinals or GPU-UUID prefixes, parsing stops at
    the first entry that names no GPU, a repeated GPU hides them all, "" hides every GPU. MIG ids
    cannot be mapped from device UUIDs, so they leave every GPU listed (the slices share its
    compute capability). Ordinals assume CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML's order; on a host
    mixing GPU models CUDA's default order may differ, and the UUID form is exact.
    """
    if env is None or env.strip().startswith("MIG-"):
        return list(range(len(uuids)))
    out: list[int] = []
    for entry in (e.strip() for e in env.split(",")):
        if entry.startswith("GPU-"):
            matches = [i for i, u in enumerate(uuids) if u.startswith(entry)]
            idx = matches[0] if len(matches) == 1 else -1
        else:
            idx = _strtoul(entry)
            idx = idx if idx < len(uuids) else -1
        if idx < 0:
            break
        if idx in out:
            return []
        out.append(idx)
    return out


def _optional(call: Any, *args: Any) -> Any:
    """A query that some GPUs, drivers or fake modules lack: None rather than a failed probe."""
    try:
        return call(*args) if call is not None else None
    except Exception:
        return None


def _gpu_detail(nvml: Any, handle: Any, cuda_index: int, nvml_index: int) -> dict[str, Any]:
    """One GPU's facts; the optional ones (power, clocks) are None where NVML cannot say."""
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    power_mw = _optional(getattr(nvml, "nvmlDeviceGetEnforcedPowerLimit", None), handle)
    max_clock = getattr(nvml, "nvmlDeviceGetMaxClockInfo", None)
    return {
        "index": cuda_index,
        "nvml_index": nvml_index,
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "memory_total_bytes": int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        "compute_capability": f"{major}.{minor}",
        "bf16": (major, minor) >= BF16_MIN_CC,
        "power_limit_w": power_mw / 1000 if power_mw is not None else None,
        "sm_clock_max_mhz": _optional(max_clock, handle, getattr(nvml, "NVML_CLOCK_SM", 1)),
        "mem_clock_max_mhz": _optional(max_clock, handle, getattr(nvml, "NVML_CLOCK_MEM", 2)),
    }


def _import_pynvml() -> Any:
    import pynvml

    return pynvml


def nvml_facts(nvml: Any = None) -> NvmlFacts:
    """GPU facts from NVML (no CUDA context); a missing library or driver is a reason, not an error."""
    try:
        nvml = nvml or _import_pynvml()
        nvml.nvmlInit()
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return NvmlFacts(ok=False, error=_error(exc))
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        uuids = [_text(nvml.nvmlDeviceGetUUID(h)) for h in handles]
        visible = visible_indices(uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))
        gpus = tuple(_gpu_detail(nvml, handles[n], i, n) for i, n in enumerate(visible))
        cuda = _optional(getattr(nvml, "nvmlSystemGetCudaDriverVersion", None))
        return NvmlFacts(
            ok=True,
            driver_version=_text(nvml.nvmlSystemGetDriverVersion()),
            cuda_driver_version=_cuda_version_text(cuda) if cuda else None,
            gpus=gpus,
        )
    except Exception as exc:
        return NvmlFacts(ok=False, error=_error(exc))
    finally:
        _optional(getattr(nvml, "nvmlShutdown", None))
