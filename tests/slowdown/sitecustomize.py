"""A real slowdown of the environment, for proving `loadbench ab` catches one (tests, tests/perf, scripts).

Put this directory on a side's PYTHONPATH (`--new-env PYTHONPATH=tests/slowdown`) and name the slowdowns in
LOADBENCH_SLOWDOWN, e.g. `compute=0.10` or `load=0.10` or `linear=0.10`; loadbench's code is untouched.
Each target's outermost call spins afterwards for the given fraction of the time it took (on a GPU after
waiting for its kernels, a synchronisation the base side does not have):

- compute: a module's forward (the outermost `torch.nn.Module.__call__`), `Tensor.backward`, every
  optimizer step and transformers' `generate`: prefill, train and decode each about that much slower;
- load: transformers' `PreTrainedModel.from_pretrained` (the whole load, reading the safetensors included);
- linear: `torch.nn.Linear.forward` only (on a tiny model most time is elsewhere, so the metrics slow less).

The patches are applied as each library is imported (an import hook), so an interpreter that never imports
torch pays nothing, and cells forked from a template that imported it inherit them.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import sys
import threading
import time
from typing import Any

FRACTIONS = {
    name.strip(): float(value)
    for name, _, value in (
        part.partition("=") for part in os.environ.get("LOADBENCH_SLOWDOWN", "").split(",")
    )
    if name.strip() and value.strip()
}
_inside = threading.local()


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _sync() -> None:
    """On a GPU a call returns before its kernels finish: wait for them, so the spin follows their time."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def slowed(fn: Any, target: str) -> Any:
    """`fn`, spinning FRACTIONS[target] of its own time after its outermost call returns."""
    fraction = FRACTIONS[target]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if getattr(_inside, target, False):
            return fn(*args, **kwargs)
        setattr(_inside, target, True)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _sync()
            setattr(_inside, target, False)
            _spin(fraction * (time.perf_counter() - start))

    return wrapper


def _patch_torch(torch: Any) -> None:
    if "compute" in FRACTIONS:
        torch.nn.Module.__call__ = slowed(torch.nn.Module.__call__, "compute")
        torch.Tensor.backward = slowed(torch.Tensor.backward, "compute")
        started: dict[int, float] = {}

        def before(optimizer: Any, args: Any, kwargs: Any) -> None:
            started[id(optimizer)] = time.perf_counter()

        def after(optimizer: Any, args: Any, kwargs: Any) -> None:
            _sync()
            _spin(
                FRACTIONS["compute"] * (time.perf_counter() - started.pop(id(optimizer), time.perf_counter()))
            )

        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        register_optimizer_step_pre_hook(before)
        register_optimizer_step_post_hook(after)
    if "linear" in FRACTIONS:
        torch.nn.Linear.forward = slowed(torch.nn.Linear.forward, "linear")


def _patch_modeling(module: Any) -> None:
    if "load" in FRACTIONS:
        model = module.PreTrainedModel
        model.from_pretrained = classmethod(slowed(model.from_pretrained.__func__, "load"))


def _patch_generation(module: Any) -> None:
    if "compute" in FRACTIONS:
        module.GenerationMixin.generate = slowed(module.GenerationMixin.generate, "compute")


PATCHES = {
    "torch": _patch_torch,
    "transformers.modeling_utils": _patch_modeling,
    "transformers.generation.utils": _patch_generation,
}


class _Patcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of each module PATCHES names, to patch it once imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader, patch = spec.loader, PATCHES[fullname]
        original = loader.exec_module  # type: ignore[union-attr]

        def exec_module(module: Any) -> None:
            original(module)
            patch(module)

        loader.exec_module = exec_module  # type: ignore[union-attr]
        return spec


if FRACTIONS:
    sys.meta_path.insert(0, _Patcher())
