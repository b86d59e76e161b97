"""One side of `loadbench ab`, run by that side's own interpreter: `python -m bench.run.ab.side FD`.

The side imports loadbench from its interpreter, so a change to `loader/` or `bench/measure/` is measured
as it stands on that side. It plans the spec it is sent, starts its own warm template (bench.run.node),
and then runs one cell per request in a fresh process forked from that template, answering each request
with the cell's record. The parent owns the run directory; a side writes only its logs.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bench.measure.probes import Budget
from bench.plan.checkpoints import read_json
from bench.plan.matrix import MEASURE_VERSION, Cell, MatrixSpec
from bench.plan.planning import make_plan
from bench.run.ab.protocol import PROTOCOL, decode, encode
from bench.run.faults import faults_from_environment
from bench.run.memory_store import MemoryStore
from bench.run.node import (
    begin_template,
    gpu_samplers,
    prepare_node,
    stop_template,
    template_modules,
)
from bench.run.progress import NullProgress
from bench.run.runner import DEFAULT_TIMEOUT_S, Runner, RunOptions
from bench.run.session import lanes_for, run_environment

__all__ = ["main"]


@dataclasses.dataclass
class Side:
    """A side that is ready: its plan's cells, and a runner whose cells fork from its template."""

    cells: dict[str, Cell]
    runner: Runner
    store: MemoryStore
    samplers: dict[int, Any]

    def run(self, cell_id: str, first: bool) -> dict[str, Any]:
        """One cell in a fresh process; its record. After the side's `first` round the cell skips the
        quality pass and the sdpa kernel probes, and says why: both are read once per side, not every
        round (untimed, they would only add to each round's cost)."""
        options = self.runner.options
        later = "read in this side's first round"
        self.runner.options = dataclasses.replace(
            options,
            quality_ref=options.quality_ref if first else None,
            quality_reason=options.quality_reason if first or options.quality_ref is None else later,
            kernels_reason=None if first else later,
        )
        try:
            self.runner.run([self.cells[cell_id]])
        finally:
            self.runner.options = options
        return self.store.records.pop()

    def close(self) -> None:
        for sampler in self.samplers.values():
            sampler.stop()


def start(request: dict[str, Any]) -> tuple[Side, dict[str, Any]]:
    """Plan the spec, build or find its checkpoint, start the template; the side and its `ready` answer."""
    spec = MatrixSpec.from_mapping(request["spec"], name=request.get("name", "custom"))
    begin_template(template_modules(spec.quant))  # imports while this process plans
    from bench.plan.capabilities import probe_cached
    from bench.plan.models import materialize

    caps = probe_cached()
    plan = make_plan(spec, caps.host, online=request.get("online", False), fit_check=request["fit_check"])
    if plan.model is not None:
        materialize(plan.model)  # the parent built it already: a cache hit, unless this side builds otherwise
    directory = Path(request["directory"])
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    lane = lanes_for(caps)[0]
    timeout = request.get("timeout_s") or DEFAULT_TIMEOUT_S["cpu" if lane is None else "cuda"]
    node = prepare_node(
        plan.checkpoint, plan.fingerprint, lane, logs, quality=request["quality"], timeout_s=timeout
    )
    samplers = gpu_samplers([lane])
    options = RunOptions(
        timeout_s=request.get("timeout_s"),
        budget=Budget(**request["budget"]),
        lanes=[lane],
        samplers=dict(samplers),
        model_config=plan.model.config
        if plan.model is not None
        else read_json(plan.checkpoint / "config.json"),
        calibration=node.calibration,
        quality_ref=node.quality_ref,
        quality_reason=node.quality_reason,
        faults=faults_from_environment(),
        bitsandbytes=(
            caps.host.bitsandbytes_version,
            caps.host.bitsandbytes_error,
            tuple(caps.host.bitsandbytes_devices),
        ),
    )
    store = MemoryStore(directory)
    runner = Runner(store, plan.checkpoint, options, NullProgress(), node.ctx)
    side = Side({c.cell_id: c for c in plan.cells}, runner, store, samplers)
    ready = {
        "op": "ready",
        "protocol": PROTOCOL,
        "measure_version": MEASURE_VERSION,
        "cells": {c.cell_id: c.skip_reason for c in plan.cells},
        "python": sys.executable,
        "device": "cpu" if lane is None else "cuda",
        "host": socket.gethostname(),
        "environment": run_environment(caps),
        "template_s": node.template_s,
        "isolation": node.isolation,
        "quality_reference": node.quality_reference,
        "calibration": node.calibration,
        "waited_s": node.waited_s,
    }
    return side, ready


def requests(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    """The parent's requests until it closes our input."""
    for line in stream:
        if line.strip():
            yield decode(line)


def serve(side: Side, stream: IO[bytes], answer: Any) -> None:
    """Answer `run` requests until the input ends; a Ctrl-C (the parent's SIGINT) ends the cell running now
    with its `interrupted` record, answered before the side exits."""
    for request in requests(stream):
        if request["op"] != "run":
            answer({"op": "failed", "message": f"unknown request {request['op']!r}"})
            continue
        if request["cell_id"] not in side.cells:
            answer({"op": "failed", "message": f"this side's plan has no cell {request['cell_id']}"})
            continue
        try:
            record = side.run(request["cell_id"], first=bool(request.get("first", True)))
        except KeyboardInterrupt:
            if side.store.records:
                answer({"op": "record", "record": side.store.records.pop()})
            raise
        answer({"op": "record", "record": record})


def main(argv: list[str] | None = None) -> int:
    """Serve one side: read `start`, answer `ready` (or `failed` with one sentence), then serve cells."""
    args = sys.argv[1:] if argv is None else argv
    out = os.fdopen(int(args[0]), "wb", buffering=0)
    # The parent's SIGINT is how a Ctrl-C reaches the running cell, even where this process was started
    # with SIGINT ignored (a shell without job control does that to background commands).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def answer(message: dict[str, Any]) -> None:
        out.write(encode(message))

    side = None
    try:
        first = sys.stdin.buffer.readline()
        try:
            side, ready = start(decode(first))
        except Exception as exc:  # every failure to get ready is one sentence for the parent
            answer({"op": "failed", "message": f"{type(exc).__name__}: {exc}"})
            return 1
        answer(ready)
        serve(side, sys.stdin.buffer, answer)
        return 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the parent is gone: nothing to answer to
        return 1
    finally:
        if side is not None:
            side.close()
        stop_template()


if __name__ == "__main__":
    sys.exit(main())
