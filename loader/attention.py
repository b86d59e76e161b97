"""Which attention implementations this host can run, and why not."""

from __future__ import annotations

from loader.host import HostCapabilities

ATTENTION = (None, "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
FLASH_MIN_CC = {"flash_attention_2": (8, 0), "flash_attention_3": (9, 0)}
_FLASH_PACKAGE = {
    "flash_attention_2": "flash-attn",
    "flash_attention_3": "flash-attn-3 (flash_attn_interface)",
}


def attention_unsupported_reason(
    attn: str | None, dtype: str, caps: HostCapabilities, *, training: bool = False
) -> str | None:
    """One sentence saying why `attn` cannot run here with this resolved dtype, or None if it can."""
    if attn in FLASH_MIN_CC:
        need = FLASH_MIN_CC[attn]
        need_txt = f"{need[0]}.{need[1]}"
        if not caps.cuda:
            return f"{attn} needs a CUDA GPU of compute capability {need_txt}+; this host has none."
        gpu = caps.gpus[0]
        if gpu.compute_capability < need:
            have = ".".join(map(str, gpu.compute_capability))
            return f"{attn} needs a CUDA GPU of compute capability {need_txt}+; {gpu.name} is {have}."
        installed = caps.flash_attn_version if attn == "flash_attention_2" else caps.flash_attn_3
        if not installed:
            return (
                f"{attn} needs the {_FLASH_PACKAGE[attn]} package, which is not installed "
                "(pip install 'loadbench[flash]' on a CUDA machine), or use attn_implementation='sdpa'."
            )
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
