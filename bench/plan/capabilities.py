"""What this host has: CPU, memory, GPUs (via NVML), drivers, bitsandbytes, flash-attn, library versions.

The benchmark's parent process must never create a CUDA context (its cells' processes each get a fresh
one), so `probe()` reads GPUs through NVML, which never creates one, and imports bitsandbytes (and torch)
only in a short child process. The loader's own per-config checks (`loader.support`) then answer
"can this knob value run here?" against `Capabilities.host`, so `loadbench env`, the planner and the
loader all give the same sentence.

The NVML facts are in bench.plan.gpu_facts, the probe's record and the knob rows in
bench.plan.host_facts, the `loadbench env` tables in bench.plan.env_render; this module probes,
and its names are the ones callers import.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

import loader
from bench.plan.env_render import host_rows, render_env
from bench.plan.gpu_facts import BF16_MIN_CC, NvmlFacts, nvml_facts, visible_indices
from bench.plan.host_facts import Capabilities, knob_support
from loader.host import (
    GpuInfo,
    HostCapabilities,
    flash_attn_packages,
    hub_kernel_facts,
    quant_library_versions,
)

if TYPE_CHECKING:
    import argparse

__all__ = [
    "BF16_MIN_CC",
    "CPU_FLAGS",
    "Capabilities",
    "NvmlFacts",
    "child_facts",
    "cpu_model_and_flags",
    "dist_version",
    "host_rows",
    "knob_support",
    "main_env",
    "nvml_facts",
    "probe",
    "probe_cached",
    "render_env",
    "visible_indices",
]

# CPU features that decide which CPU kernels (oneDNN/AMX bf16, AVX-512, Arm SVE/bf16) a run can use.
CPU_FLAGS = (
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
    "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip
CHILD_TIMEOUT_S = 120.0
_MARKER = "LOADBENCH_CAPS "


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
    """Start the bitsandbytes/torch probe; `probe()` reads the cheap facts while it runs."""
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


# Packages whose installed files decide the child's answer; a cached answer is for exactly these versions.
_CHILD_PACKAGES = ("torch", "bitsandbytes", "triton", "transformers", "numpy")


def child_cache_path(cache_dir: Path, cuda: bool) -> Path | None:
    """Where the child's answer is cached for this boot, interpreter, package versions, visible devices
    and probe code: any of them changing means probing again. None where the boot id is unknown."""
    import hashlib

    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    parts = [boot, sys.executable, _CHILD, str(cuda), os.environ.get("CUDA_VISIBLE_DEVICES", "")]
    parts += [f"{name}={dist_version(name)}" for name in _CHILD_PACKAGES]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return cache_dir / "probe" / f"{key}.json"


def _cached_child(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return facts if isinstance(facts, dict) else None


def _store_child(path: Path | None, facts: dict[str, Any]) -> None:
    """Keep a complete answer (torch answered; bitsandbytes answered, even "cannot import"); a timeout or
    crash of the child is not a fact about the host and is probed again next time."""
    error = str(facts.get("bitsandbytes_error") or "")
    if path is None or "torch_version" not in facts or "probe process" in error:
        return
    from bench.fileio import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(facts))


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


def _compute_capability(text: str) -> tuple[int, int]:
    """NVML's "major.minor" text, as gpu_facts writes it, as the loader's (major, minor)."""
    major, minor = text.split(".")
    return int(major), int(minor)


def _host(nvml: NvmlFacts, child: dict[str, Any], flash: tuple[str | None, bool]) -> HostCapabilities:
    """The loader's record of this host, from the NVML facts, the child's facts, flash-attn's packages and
    the hub kernels in the local cache."""
    kernels = hub_kernel_facts()
    gpus = tuple(
        GpuInfo(g["name"], g["memory_total_bytes"], _compute_capability(g["compute_capability"]), g["bf16"])
        for g in nvml.gpus
    )
    return HostCapabilities(
        gpus=gpus,
        flash_attn_version=flash[0],
        flash_attn_3=flash[1],
        bitsandbytes_version=child.get("bitsandbytes_version"),
        bitsandbytes_error=child.get("bitsandbytes_error"),
        bitsandbytes_devices=tuple(child.get("bitsandbytes_devices") or ()),
        kernels_version=kernels[0],
        hub_kernels=kernels[1],
        quant_libraries=quant_library_versions(),
    )


def probe(nvml_module: Any = None, cache_dir: Path | None = None) -> Capabilities:
    """Probe this host without creating a CUDA context here (NVML + one child process).

    `nvml_module` replaces `pynvml` (tests pass a fake with pynvml's function names). `cache_dir`: keep
    the child's answer there (child_cache_path) and reuse it: the child imports torch and bitsandbytes
    cold, seconds that every run on this boot with these packages would spend to learn the same facts.
    """
    nvml = nvml_facts(nvml_module)
    cache = child_cache_path(cache_dir, bool(nvml.gpus)) if cache_dir is not None else None
    cached = _cached_child(cache)
    proc = (
        None if cached is not None else _start_child(bool(nvml.gpus))
    )  # runs while the cheap facts are read
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
        child = cached if cached is not None else _finish_child(proc)  # type: ignore[arg-type]
    if cached is None:
        _store_child(cache, child)
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
    """`probe()` once per process (the host does not change during a run), its child's answer cached
    beside loadbench's checkpoints."""
    from bench.plan.checkpoints import cache_root

    return probe(cache_dir=cache_root())


# -- `loadbench env` -------------------------------------------------------------------------------


def main_env(args: argparse.Namespace) -> int:
    """`loadbench env [--json]`: probe once and show it (JSON: `Capabilities.to_dict()`)."""
    caps = probe_cached()
    if getattr(args, "json", False):
        print(json.dumps(caps.to_dict(), indent=2))
        return 0
    from rich.console import Console

    render_env(caps, Console())
    return 0
