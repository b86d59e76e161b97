"""Decode modes: the generate() arguments of each, the compile warm-up of `compiled`, and its guards.

static: transformers' StaticCache (`cache_implementation="static"`), preallocated to prompt + new tokens,
with generate's automatic compiling turned off (on CUDA a static cache would otherwise compile).
compiled: the same cache with transformers' own compile path (`compile_config`): the prompt's forward
runs eagerly and every generated token's forward goes through torch.compile, as a user of
`generate(cache_implementation="static")` on a GPU gets it. On the CPU transformers compiles only when
asked (`CompileConfig._compile_all_devices`), so loadbench asks.

Compiling happens in the first generate() call. `compile_warmup` makes those calls before the decode
phase's memory peaks reset and before any sample is timed, and repeats a call until one compiles
nothing new; the sampled metrics then hold no compile time, and `check_no_recompiles` refuses a run
whose timed samples compiled again. The counts come from torch._dynamo's own counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.measure.workloads import InvalidMeasurement

__all__ = ["CompileWarmup", "compile_warmup", "generate_kwargs"]

# A compiled generate() that still compiles after this many calls is recompiling on every call.
MAX_COMPILE_CALLS = 4


def generate_kwargs(mode: str) -> dict[str, Any]:
    """The generate() keyword arguments of a decode mode (schema.DECODE_MODES)."""
    if mode == "dynamic":
        return {}
    if mode == "static":
        return {"cache_implementation": "static", "disable_compile": True}
    if mode == "compiled":
        from transformers import CompileConfig

        config = CompileConfig()
        config._compile_all_devices = True  # type: ignore[assignment]  # transformers' switch for the CPU
        return {"cache_implementation": "static", "compile_config": config}
    raise ValueError(f"decode mode {mode!r} is not one of: dynamic, static, compiled")


def _counts() -> tuple[int, int]:
    """(graphs dynamo has compiled, graph breaks it has hit) in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))


def _cache_counts() -> tuple[int, int]:
    """(hits, misses) of inductor's on-disk FX graph cache so far: a hit skips most of the compiling."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_hit"]), int(counters["inductor"]["fxgraph_cache_miss"])


def _cache_word(hits: int, misses: int) -> str:
    if hits and misses:
        return "partly cached"
    return "cached" if hits else "cold" if misses else "not used"


@dataclass
class CompileWarmup:
    """What compiling cost: the compiling calls' wall times, and what dynamo built."""

    call_s: list[float]  # wall time of each warm-up call that compiled something
    graphs: int
    graph_breaks: int
    graphs_after: int  # dynamo's graph count once warm: a timed sample must not raise it
    cache: str  # inductor's FX graph cache during the warm-up: cold, cached, partly cached, not used

    def columns(self, steady_s: float) -> dict[str, Any]:
        """decode.compile_s: what the compiling calls took beyond a steady generation (the median one)."""
        return {
            "decode.compile_s": sum(max(0.0, s - steady_s) for s in self.call_s),
            "decode.compiled_graphs": self.graphs,
            "decode.graph_breaks": self.graph_breaks,
            "decode.compile_cache": self.cache,
        }

    def check_no_recompiles(self) -> None:
        graphs, _ = _counts()
        if graphs != self.graphs_after:
            raise InvalidMeasurement(
                f"torch.compile built {graphs - self.graphs_after} new graph(s) during the timed decode "
                "samples (recompiles), so their times would include compiling."
            )


def compile_warmup(generate: Callable[[], object], sync: Callable[[], None]) -> CompileWarmup:
    """Call `generate` until a call compiles nothing new; refuses a forward transformers did not compile."""
    start_graphs, start_breaks = _counts()
    start_hits, start_misses = _cache_counts()
    graphs = start_graphs
    calls: list[float] = []
    for _ in range(MAX_COMPILE_CALLS):
        start = time.perf_counter()
        generate()
        sync()
        elapsed = time.perf_counter() - start
        now, _ = _counts()
        if now == graphs:
            break
        calls.append(elapsed)
        graphs = now
    else:
        raise InvalidMeasurement(
            f"torch.compile still built new graphs on generate call {MAX_COMPILE_CALLS}: decode recompiles on "
            "every call, so no sample would be free of compiling."
        )
    if graphs == start_graphs:
        raise NotImplementedError(
            "transformers did not compile the forward (no graph was built): this model or its quantizer "
            "is not compileable, so decode=compiled would measure uncompiled decoding."
        )
    _, breaks = _counts()
    hits, misses = _cache_counts()
    cache = _cache_word(hits - start_hits, misses - start_misses)
    return CompileWarmup(calls, graphs - start_graphs, breaks - start_breaks, graphs, cache)
