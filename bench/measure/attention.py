"""Which kernel torch's scaled_dot_product_attention ran, read back from the ops the profiler saw.

The record says which backend ran rather than which was asked for: unpinned sdpa picks per call (the CPU
flash kernel, or on CUDA flash, efficient, cuDNN or math by dtype, shape and mask), and a pinned one is
confirmed by the op name. Two untimed probes run under the cell's pin: one no-grad forward of the
workload's shape (attn.sdpa_kernel), and one whole generation of the cell's decode mode
(decode.sdpa_kernel). A pin restricts torch's eager dispatch only: a torch.compile'd forward runs the
attention inductor chose (seen on the CPU: the flash kernel under a math pin) or its own generated code,
which the decode probe sees as forwards without an aten sdpa call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from bench.schema import ATTN_KERNEL_COLUMN
from loader.attention import SDPA_OPS

__all__ = ["DECODE_KERNEL_COLUMN", "decode_kernel_columns", "not_probed", "sdpa_calls", "sdpa_kernel_columns"]

DECODE_KERNEL_COLUMN = "decode.sdpa_kernel"


def sdpa_calls(fn: Callable[[], Any]) -> Counter[str]:
    """How many times each sdpa kernel (SDPA_OPS names: math, flash, ...) ran while `fn` ran."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    calls: Counter[str] = Counter()
    for event in prof.key_averages():
        if event.key in SDPA_OPS:
            calls[SDPA_OPS[event.key]] += event.count
    return calls


def not_probed(reason: str, column: str = ATTN_KERNEL_COLUMN) -> dict[str, Any]:
    """A kernel column left unread, with the reason."""
    return {column: None, f"{column}.reason": reason}


def _not_sdpa(column: str, attn: str | None) -> dict[str, Any]:
    return {column: None, f"{column}.reason": f"attention {attn} is not sdpa"}


def sdpa_kernel_columns(model: Any, input_ids: torch.Tensor, attn: str | None) -> tuple[dict[str, Any], int]:
    """(attn.sdpa_kernel: the kernel(s) one forward ran, "+"-joined if calls differed; the number of sdpa
    calls in that forward). Null with the reason for attention that is not sdpa."""
    if attn != "sdpa":
        return _not_sdpa(ATTN_KERNEL_COLUMN, attn), 0
    calls = sdpa_calls(lambda: model(input_ids, use_cache=False))
    if not calls:
        why = "the profiler saw no sdpa kernel op in a forward"
        return {ATTN_KERNEL_COLUMN: None, f"{ATTN_KERNEL_COLUMN}.reason": why}, 0
    return {ATTN_KERNEL_COLUMN: "+".join(sorted(calls))}, sum(calls.values())


def decode_kernel_columns(
    generate: Callable[[], Any], attn: str | None, per_forward: int, forwards: int, pin: str | None = None
) -> dict[str, Any]:
    """decode.sdpa_kernel: the kernels one generation of `forwards` forwards ran; "+inductor" when some of
    them made no aten sdpa call (compiled forwards whose attention inductor generated). With a `pin`, a note
    says when any forward ran another kernel than the pinned one: a pin does not reach inside a compiled
    graph, whose kernels inductor chose when it compiled."""
    if attn != "sdpa" or per_forward == 0:
        return _not_sdpa(DECODE_KERNEL_COLUMN, attn)
    calls = sdpa_calls(generate)
    kernels = sorted(calls)
    eager = sum(calls.values()) // per_forward
    notes = []
    if eager < forwards:
        kernels.append("inductor")
        notes.append(
            f"{forwards - eager} of {forwards} forwards per generation ran attention as inductor's code"
        )
    others = sorted(set(calls) - {pin}) if pin is not None else []
    if others:
        notes.append(
            f"{sum(calls[k] for k in others)} sdpa call(s) per generation ran {'+'.join(others)} although the "
            f"pin asked for {pin} (a pin does not reach inside a compiled graph)"
        )
    out: dict[str, Any] = {DECODE_KERNEL_COLUMN: "+".join(kernels)}
    if notes:
        out[f"{DECODE_KERNEL_COLUMN}.note"] = "; ".join(notes)
    return out
