"""Which attention implementations this host can run, and why not; the sdpa backend pin.

Besides transformers' own implementations, two kinds of value a user picks on transformers 5:
- an sdpa backend pin (`sdpa_backend`: math, flash, efficient, cudnn): attn_implementation="sdpa" with
  `torch.nn.attention.sdpa_kernel` restricting torch to that one kernel around the code that runs the
  model (`sdpa_pin`); torch raises rather than fall back when the pinned kernel cannot take the call;
- flash attention from the kernels hub (`KERNELS_FLASH`): a prebuilt kernel that the `kernels` package
  loads from the Hugging Face cache, no flash-attn build needed. loadbench runs offline, so the kernel
  must already be in the cache; `kernels_fetch_command` says how to put it there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from loader.host import HUB_ATTENTION_KERNELS, HostCapabilities

# The hub kernel transformers loads for attn_implementation=KERNELS_FLASH, and the major version it asks for
# (transformers.modeling_flash_attention_utils.FLASH_ATTN_KERNEL_VERSIONS; a test keeps the two equal).
KERNELS_FLASH = "kernels-community/flash-attn2"
KERNELS_FLASH_VERSION = HUB_ATTENTION_KERNELS[KERNELS_FLASH]
ATTENTION = (None, "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention", KERNELS_FLASH)
# torch.nn.attention.SDPBackend members by the name a pin uses.
SDPA_BACKENDS = {
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}
# The aten op each sdpa backend runs as (what `bench.measure` reads back to say which kernel ran).
SDPA_OPS = {
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
}
FLASH_MIN_CC = {"flash_attention_2": (8, 0), "flash_attention_3": (9, 0), KERNELS_FLASH: (8, 0)}
# Pinned sdpa kernels that exist only on CUDA, and those that take only half precision there; both want sm80+.
_SDPA_CUDA_ONLY = ("efficient", "cudnn")
_SDPA_HALF_ON_CUDA = ("flash", "cudnn")
_SDPA_MIN_CC = {"flash": (8, 0), "cudnn": (8, 0)}
_FLASH_PACKAGE = {
    "flash_attention_2": "flash-attn",
    "flash_attention_3": "flash-attn-3 (flash_attn_interface)",
}


def kernels_fetch_command(repo: str = KERNELS_FLASH, version: int = KERNELS_FLASH_VERSION) -> str:
    """The command that puts a hub kernel into the local cache (run once, online, on the GPU host)."""
    return f"python -c \"from kernels import get_kernel; get_kernel('{repo}', version={version})\""


def attention_unsupported_reason(
    attn: str | None,
    dtype: str,
    caps: HostCapabilities,
    *,
    training: bool = False,
    sdpa_backend: str | None = None,
) -> str | None:
    """One sentence saying why `attn` cannot run here with this resolved dtype, or None if it can."""
    if attn == "sdpa" and sdpa_backend is not None:
        return _sdpa_pin_reason(sdpa_backend, dtype, caps)
    if attn in FLASH_MIN_CC:
        need = FLASH_MIN_CC[attn]
        need_txt = f"{need[0]}.{need[1]}"
        if not caps.cuda:
            return f"{attn} needs a CUDA GPU of compute capability {need_txt}+; this host has none."
        gpu = caps.gpus[0]
        if gpu.compute_capability < need:
            have = ".".join(map(str, gpu.compute_capability))
            return f"{attn} needs a CUDA GPU of compute capability {need_txt}+; {gpu.name} is {have}."
        missing = _kernels_reason(caps) if attn == KERNELS_FLASH else _flash_package_reason(attn, caps)
        if missing:
            return missing
        if dtype == "float32":
            return (
                f"{attn} runs only in float16 or bfloat16; with dtype='float32' transformers would warn "
                "and fall back or fail mid-run, so use dtype='bfloat16'."
            )
    if attn == "flex_attention" and training and not caps.cuda:
        return (
            "flex_attention has no backward pass on the CPU, so it cannot train here; use 'sdpa' or 'eager'."
        )
    return None


def _flash_package_reason(attn: str, caps: HostCapabilities) -> str | None:
    installed = caps.flash_attn_version if attn == "flash_attention_2" else caps.flash_attn_3
    if installed:
        return None
    return (
        f"{attn} needs the {_FLASH_PACKAGE[attn]} package, which is not installed "
        "(pip install 'loadbench[flash]' on a CUDA machine), or use attn_implementation='sdpa'."
    )


def _kernels_reason(caps: HostCapabilities) -> str | None:
    """kernels-hub flash attention needs the kernels package and the kernel already in the local cache."""
    if not caps.kernels_version:
        return f"{KERNELS_FLASH} needs the kernels package, which is not installed (pip install kernels)."
    if KERNELS_FLASH not in caps.hub_kernels:
        return (
            f"{KERNELS_FLASH} (version {KERNELS_FLASH_VERSION}) is not in the local Hugging Face cache and "
            f"loadbench runs offline; fetch it once, online, with: {kernels_fetch_command()}"
        )
    return None


def _sdpa_pin_reason(backend: str, dtype: str, caps: HostCapabilities) -> str | None:
    """Why torch's sdpa cannot run pinned to `backend` here (math runs everywhere; CPU has a flash kernel)."""
    if backend in _SDPA_CUDA_ONLY and not caps.cuda:
        return f"the sdpa {backend} kernel exists only on CUDA GPUs; this host has none (use sdpa:math or sdpa:flash)."
    if not caps.cuda:
        return None
    need = _SDPA_MIN_CC.get(backend)
    gpu = caps.gpus[0]
    if need and gpu.compute_capability < need:
        have = ".".join(map(str, gpu.compute_capability))
        return (
            f"the sdpa {backend} kernel needs compute capability {need[0]}.{need[1]}+; {gpu.name} is {have}."
        )
    if backend in _SDPA_HALF_ON_CUDA and dtype == "float32":
        return (
            f"the sdpa {backend} kernel takes only float16 or bfloat16 on CUDA; with dtype='float32' "
            "every call would fail, so use dtype='bfloat16' or sdpa:efficient."
        )
    return None


@contextlib.contextmanager
def sdpa_pin(backend: str | None) -> Iterator[None]:
    """Restrict torch's scaled_dot_product_attention to one backend while the block runs (None: no pin).

    Wrap every call of the model whose kernel should be the pinned one; torch raises "No available
    kernel" instead of falling back to another when the pinned one cannot take a call.
    """
    if backend is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend])):
        yield
