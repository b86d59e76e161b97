"""`loadbench env` as people read it: a table of host facts and one of knob values with their reasons."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.plan.host_facts import Capabilities, knob_support

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["host_rows", "render_env"]


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
        (
            "quantization libraries",
            ", ".join(f"{d} {v}" for d, v in host.quant_libraries) or "none (pip install -e '.[quant]')",
        ),
        ("flash-attn 2", caps.flash_attn_version or "not installed"),
        ("flash-attn 3", "installed" if caps.flash_attn_3 else "not installed"),
        ("kernels (hub)", _kernels_line(caps)),
        ("torch", f"{caps.torch_version or '-'} (CUDA build {caps.torch_cuda_version or 'none'})"),
        ("transformers", caps.transformers_version or "-"),
        ("peft", caps.peft_version or "-"),
        ("accelerate", caps.accelerate_version or "-"),
        ("python", f"{caps.python_version} on {caps.platform} ({caps.hostname})"),
    ]
    return rows


def _kernels_line(caps: Capabilities) -> str:
    host = caps.host
    if not host.kernels_version:
        return "not installed"
    cached = ", ".join(host.hub_kernels) or "no attention kernel cached"
    return f"{host.kernels_version} ({cached})"


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
