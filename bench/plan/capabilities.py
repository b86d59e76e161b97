"""What this host has: CPU, memory, GPUs (via NVML), drivers, bitsandbytes, flash-attn, library versions.

The benchmark's parent process must never create a CUDA context (its cells' processes each get a fresh
one), so `probe()` reads GPUs through NVML, which never creates one, and imports bitsandbytes (and torch)
only in a short child process. The loader's own per-config checks (`loader.support`) then answer
"can this knob value run here?" against `Capabilities.host`, so `loadbench env`, the planner and the
loader all give the same sentence.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

import loader
from loader.attention import ATTENTION, attention_unsupported_reason
from loader.config import LoadConfig
from loader.dtypes import DTYPES
from loader.host import GpuInfo, HostCapabilities, flash_attn_packages
from loader.quantization import quantization_unsupported_reason
from loader.support import unsupported_reason

if TYPE_CHECKING:
    import argparse

    from rich.console import Console

# CPU features that decide which CPU kernels (oneDNN/AMX bf16, AVX-512, Arm SVE/bf16) a run can use.
CPU_FLAGS = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
    "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip
BF16_MIN_CC = (8, 0)  # the rule loader.host.probe_host applies to torch's device properties
CHILD_TIMEOUT_S = 120.0
_MARKER = "LOADBENCH_CAPS "
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


# -- NVML ------------------------------------------------------------------------------------------


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


# -- the child process: bitsandbytes and torch, imported where a CUDA context cannot hurt ----------

# The child never runs a kernel, so torch.compile (which bitsandbytes calls at import, pulling in dynamo
# and inductor: ~3 s of a ~4.5 s probe) is made the identity there. bitsandbytes already falls back to the
# plain function when compiling fails, so this cannot change whether it imports or which library loads.
_CHILD = """
import json, sys
out = {}
try:
    import torch
    torch.compile = lambda model=None, **kw: model if model is not None else (lambda fn: fn)
    out.update(torch_version=torch.__version__, torch_cuda_version=torch.version.cuda,
               torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
               torch_num_threads=torch.get_num_threads())
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
from loader.host import probe_bitsandbytes
version, error, devices = probe_bitsandbytes(sys.argv[1] == "cuda")
out.update(bitsandbytes_version=version, bitsandbytes_error=error, bitsandbytes_devices=list(devices))
if version is not None:
    import bitsandbytes.cextension as cext
    out["bitsandbytes_backend"] = getattr(cext, "BNB_BACKEND", None)
print(sys.argv[2] + json.dumps(out), flush=True)
"""


def _child_env() -> dict[str, str]:
    """The child sees this process's GPUs, finds this checkout's `loader`, and asks NVML, not CUDA."""
    env = dict(os.environ, PYTORCH_NVML_BASED_CUDA_CHECK="1")
    root = str(Path(loader.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _start_child(cuda: bool) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", _CHILD, "cuda" if cuda else "cpu", _MARKER]
    return subprocess.Popen(args, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish_child(proc: subprocess.Popen[str], timeout: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """The child's JSON; on a crash or timeout, a bitsandbytes error that says what happened."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"bitsandbytes_error": f"the bitsandbytes probe process timed out after {timeout:.0f} s"}
    for line in reversed(stdout.splitlines()):
        if line.startswith(_MARKER):
            return json.loads(line[len(_MARKER) :])
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return {"bitsandbytes_error": f"the bitsandbytes probe process exited {proc.returncode}: {tail}"}


def child_facts(cuda: bool) -> dict[str, Any]:
    """bitsandbytes (loader.host.probe_bitsandbytes semantics) and torch facts, from a child process."""
    return _finish_child(_start_child(cuda))


# -- CPU, memory, versions -----------------------------------------------------------------------


def cpu_model_and_flags(cpuinfo: str | None = None) -> tuple[str, tuple[str, ...]]:
    """CPU model and its interesting flags from /proc/cpuinfo (x86 "flags", Arm "Features")."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    info: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip().lower(), value.strip())
    model = info.get("model name") or info.get("hardware") or platform.processor() or platform.machine()
    have = set((info.get("flags") or info.get("features") or "").split())
    return model, tuple(f for f in CPU_FLAGS if f in have)


def dist_version(name: str) -> str | None:
    """An installed distribution's version without importing it (importing torch is seconds)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _host(nvml: NvmlFacts, child: dict[str, Any], flash: tuple[str | None, bool]) -> HostCapabilities:
    gpus = tuple(
        GpuInfo(
            g["name"],
            g["memory_total_bytes"],
            tuple(int(x) for x in g["compute_capability"].split(".")),  # type: ignore[arg-type]
            g["bf16"],
        )
        for g in nvml.gpus
    )
    return HostCapabilities(
        gpus=gpus,
        flash_attn_version=flash[0],
        flash_attn_3=flash[1],
        bitsandbytes_version=child.get("bitsandbytes_version"),
        bitsandbytes_error=child.get("bitsandbytes_error"),
        bitsandbytes_devices=tuple(child.get("bitsandbytes_devices") or ()),
    )


def probe(nvml_module: Any = None) -> Capabilities:
    """Probe this host without creating a CUDA context here (NVML + one child process).

    `nvml_module` replaces `pynvml` (tests pass a fake with pynvml's function names).
    """
    nvml = nvml_facts(nvml_module)
    proc = _start_child(bool(nvml.gpus))  # runs while the cheap facts below are read
    try:
        model, flags = cpu_model_and_flags()
        flash = flash_attn_packages()
        cheap = {
            "cpu_model": model,
            "cpu_cores_physical": psutil.cpu_count(logical=False),
            "cpu_cores_logical": psutil.cpu_count() or os.cpu_count() or 1,
            "cpu_flags": flags,
            "memory_bytes": int(psutil.virtual_memory().total),
            "peft_version": dist_version("peft"),
            "transformers_version": dist_version("transformers"),
            "accelerate_version": dist_version("accelerate"),
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "hostname": socket.gethostname(),
        }
    finally:
        child = _finish_child(proc)
    return Capabilities(
        host=_host(nvml, child, flash),
        nvml=nvml.ok,
        nvml_error=nvml.error,
        driver_version=nvml.driver_version,
        cuda_driver_version=nvml.cuda_driver_version,
        gpus_detail=nvml.gpus,
        bitsandbytes_backend=child.get("bitsandbytes_backend"),
        torch_version=child.get("torch_version") or dist_version("torch"),
        torch_cuda_version=child.get("torch_cuda_version"),
        torch_cpu_capability=child.get("torch_cpu_capability"),
        torch_num_threads=child.get("torch_num_threads"),
        flash_attn_version=flash[0],
        flash_attn_3=flash[1],
        **cheap,
    )


@functools.cache
def probe_cached() -> Capabilities:
    """`probe()` once per process: the host does not change during a run."""
    return probe()


# -- which knob values can run here --------------------------------------------------------------


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
    for value, knobs in quant.items():
        config = LoadConfig(_PROBE_MODEL, **knobs)
        rows.append(_row("quantization", value, quantization_unsupported_reason(config.quantization, host)))
    half = _half_dtype(host)
    attention = [(a, False) for a in ATTENTION if a] + [("flex_attention", True)]
    for attn, training in attention:
        config = LoadConfig(_PROBE_MODEL, attn_implementation=attn)
        value = f"{attn} (training)" if training else attn
        reason = attention_unsupported_reason(config.attn_implementation, half, host, training=training)
        rows.append(_row("attention", value, reason))
    for device in ("cpu", "cuda"):
        config = LoadConfig(_PROBE_MODEL, device=device)
        rows.append(_row("device", device, unsupported_reason(config, host, dtype="float32")))
    return rows


# -- `loadbench env` -------------------------------------------------------------------------------


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _gpu_line(g: dict[str, Any]) -> str:
    extra = [f"power limit {g['power_limit_w']:.0f} W"] if g.get("power_limit_w") else []
    if g.get("sm_clock_max_mhz"):
        extra.append(f"SM ≤{g['sm_clock_max_mhz']} MHz")
    bf16 = "bf16" if g["bf16"] else "no bf16"
    parts = [g["name"], _gib(g["memory_total_bytes"]), f"cc {g['compute_capability']}", bf16, *extra]
    return ", ".join(parts)


def host_rows(caps: Capabilities) -> list[tuple[str, str]]:
    """The host facts `loadbench env` shows, as (label, text)."""
    host = caps.host
    bnb = (
        f"{host.bitsandbytes_version} (backend {caps.bitsandbytes_backend or '?'}; "
        f"quantizes on: {', '.join(host.bitsandbytes_devices) or 'none'})"
        if host.bitsandbytes_version
        else f"unavailable: {host.bitsandbytes_error}"
    )
    rows = [
        ("CPU", f"{caps.cpu_model} ({' '.join(caps.cpu_flags) or 'no notable flags'})"),
        ("cores", f"{caps.cpu_cores_physical or '?'} physical, {caps.cpu_cores_logical} logical"),
        ("memory", _gib(caps.memory_bytes)),
    ]
    rows += [(f"GPU {g['index']}", _gpu_line(g)) for g in caps.gpus_detail] or [("GPUs", "none visible")]
    rows += [
        ("NVIDIA driver", caps.driver_version or "-"),
        ("CUDA driver", caps.cuda_driver_version or "-"),
        ("NVML", "available" if caps.nvml else f"unavailable: {caps.nvml_error}"),
        ("bitsandbytes", bnb),
        ("flash-attn 2", caps.flash_attn_version or "not installed"),
        ("flash-attn 3", "installed" if caps.flash_attn_3 else "not installed"),
        ("torch", f"{caps.torch_version or '-'} (CUDA build {caps.torch_cuda_version or 'none'})"),
        ("transformers", caps.transformers_version or "-"),
        ("peft", caps.peft_version or "-"),
        ("accelerate", caps.accelerate_version or "-"),
        ("python", f"{caps.python_version} on {caps.platform} ({caps.hostname})"),
    ]
    return rows


def render_env(caps: Capabilities, console: Console) -> None:
    """Two tables: what the host has, and per knob value "can run" or the loader's reason why not.

    Cells are `Text`, never markup: reasons hold brackets ("loadbench[flash]") that rich would eat.
    """
    from rich.table import Table
    from rich.text import Text

    facts = Table(title="host", show_header=False)
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    for label, text in host_rows(caps):
        facts.add_row(Text(label), Text(text))
    knobs = Table(title="knob values on this host")
    for column in ("knob", "value", "here"):
        knobs.add_column(column, overflow="fold")
    for row in knob_support(caps):
        here = Text("can run", style="green") if row["ok"] else Text(row["reason"], style="red")
        knobs.add_row(Text(row["knob"]), Text(row["value"]), here)
    console.print(facts)
    console.print(knobs)


def main_env(args: argparse.Namespace) -> int:
    """`loadbench env [--json]`: probe once and show it (JSON: `Capabilities.to_dict()`)."""
    caps = probe_cached()
    if getattr(args, "json", False):
        print(json.dumps(caps.to_dict(), indent=2))
        return 0
    from rich.console import Console

    render_env(caps, Console())
    return 0


__all__ = [
    "Capabilities",
    "NvmlFacts",
    "child_facts",
    "cpu_model_and_flags",
    "knob_support",
    "main_env",
    "nvml_facts",
    "probe",
    "probe_cached",
    "render_env",
    "visible_indices",
]
