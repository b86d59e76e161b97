"""Which decode modes a cell can run, and why not (the decode axis's rules; the measuring is bench.measure).

dynamic: transformers' default growing KV cache. static: `cache_implementation="static"`, a StaticCache
preallocated to prompt + new tokens, with generate's own compiling turned off. compiled: the static cache
with each generated token's forward compiled by torch.compile (transformers' CompileConfig), which needs
a C++ compiler on the CPU (inductor builds C++ kernels) and a model whose quantizer allows compiling.
"""

from __future__ import annotations

import os
import shutil

from loader.host import HostCapabilities

__all__ = ["NOT_COMPILEABLE", "cpp_compiler", "decode_unsupported_reason"]

# Loader quantization values whose transformers quantizer says is_compileable=False: generate then skips
# compiling with only a warning, so a "compiled" cell would measure static decode under the wrong name.
NOT_COMPILEABLE = ("bnb-4bit", "bnb-8bit", "hqq-4bit", "hqq-8bit", "quanto-int8", "quanto-int4")


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would call on the CPU ($CXX, else g++), or None when it is not on PATH."""
    name = os.environ.get("CXX") or "g++"
    return shutil.which(name)


def decode_unsupported_reason(
    mode: str,
    *,
    decodes: bool,
    use_cache: bool,
    quantization: str,
    caps: HostCapabilities,
) -> str | None:
    """One sentence (starting with its rule's name) why a cell cannot decode in `mode`, or None."""
    if mode == "dynamic":
        return None
    if not decodes:
        return (
            f"rule decode-mode-needs-decode: decode={mode} only changes generation, "
            "and this cell has no decode workload."
        )
    if not use_cache:
        return (
            f"rule static-cache-needs-cache: decode={mode} generates with a static KV cache, "
            "but this cell decodes with the KV cache off (use_cache off, or auto under checkpointing)."
        )
    if mode != "compiled":
        return None
    if quantization in NOT_COMPILEABLE:
        return (
            f"rule compile-quantized: transformers does not compile a {quantization} model's forward (its "
            "quantizer is not compileable) and would silently decode uncompiled; use decode static."
        )
    if not caps.cuda and cpp_compiler() is None:
        return (
            "rule compile-needs-compiler: torch.compile on the CPU builds C++ kernels, and no C++ compiler "
            f"({os.environ.get('CXX') or 'g++'}) is on PATH; install g++ or set CXX."
        )
    return None
