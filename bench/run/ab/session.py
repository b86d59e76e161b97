"""One `loadbench ab`: plan, start both sides, measure round after round, write one run directory.

Records are the sides' own (each composed by its side's loadbench), with `side`, `ab.round`, `ab.slot` and
`ab.first` added (bench.schema.AB_COLUMNS); skipped cells are recorded once, for both sides. A cell stops
taking rounds when the caller's `settled` says its verdict is decided (the judgement lives in
bench.analysis.ab, which this stage never imports), or at `rounds`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import EXIT_INCOMPLETE, EXIT_OK, SpecError
from bench.plan.matrix import Cell, MatrixSpec
from bench.plan.planning import make_plan
from bench.run.ab.schedule import Slot, round_slots
from bench.run.ab.sides import SideError, SideProcess, SideSpec
from bench.run.compose import ModelFacts
from bench.run.node import say
from bench.run.progress import NullProgress
from bench.run.records import ab_key, is_final
from bench.run.runner import DEFAULT_TIMEOUT_S, lease_for
from bench.run.session import default_out, lanes_for, record_skips, run_meta
from bench.run.store import RunStore
from bench.run.weights import materialize_visibly
from bench.schema import AB_KEY, AB_SIDES

__all__ = ["ABRequest", "ABResult", "run_ab"]

READY_TIMEOUT_S = 900.0  # a side imports, plans and computes the quality reference before it is ready
ANSWER_MARGIN_S = 60.0  # beyond a cell's own timeout, which the side's runner enforces


@dataclass
class ABRequest:
    spec: MatrixSpec
    sides: tuple[SideSpec, SideSpec]  # base, new
    rounds: int = 8  # at most, per cell
    seed: int | None = None  # None: drawn, and recorded
    out: Path | None = None
    resume: bool = False
    timeout_s: float | None = None
    budget_s: float = 0.03  # sampling seconds per metric per round
    min_samples: int = 3  # samples per metric per round, at least
    quality: bool = True  # the quality pass, in each side's first round only
    fit_check: bool = True
    online: bool = False
    # Called with a cell's records so far (both sides, every round) and the number of cells measured:
    # True once the cell's verdict is decided.
    settled: Callable[[list[dict[str, Any]], int], bool] = lambda records, cells: False
    judgement: dict[str, Any] = field(default_factory=dict)  # the caller's settings, kept in run.json


@dataclass(frozen=True)
class ABResult:
    directory: Path
    missing: tuple[str, ...]  # record keys scheduled without a final record
    wall_s: float

    @property
    def exit_code(self) -> int:
        return EXIT_INCOMPLETE if self.missing else EXIT_OK


def run_ab(request: ABRequest) -> ABResult:
    """Measure the request's plan on both sides, interleaved; the run directory and what is missing."""
    from bench.plan.capabilities import probe_cached

    started = time.perf_counter()
    if request.rounds < 1:
        raise SpecError(f"--rounds={request.rounds} must be at least 1.")
    caps = probe_cached()
    plan = make_plan(request.spec, caps.host, online=request.online, fit_check=request.fit_check)
    runnable = [c for c in plan.cells if c.skip_reason is None]
    if runnable and plan.model is not None:
        materialize_visibly(plan.model)  # once, here: both sides then find it cached
    drawn = request.seed if request.seed is not None else random.SystemRandom().randrange(2**31)
    store = open_store(request, plan, caps, drawn)
    seed = int(store.meta[AB_KEY]["seed"])  # a resumed run keeps its first seed, so its order
    device = "cpu" if lanes_for(caps)[0] is None else "cuda"  # where the skipped cells would have run
    record_skips(
        store, plan.cells, NullProgress(), ModelFacts(plan.model.config if plan.model else None, device)
    )
    for cell in plan.cells:
        if cell.skip_reason:
            say(f"skipped {cell.label}: {cell.skip_reason}")
    if not runnable:
        return ABResult(store.directory, (), time.perf_counter() - started)
    sides = start_sides(request, store.directory, plan)
    try:
        check_sides(sides, runnable)
        store.set_meta(AB_KEY, {**store.meta[AB_KEY], "sides": side_meta(request, sides)})
        missing = run_rounds(request, store, sides, runnable, seed)
    finally:
        for side in sides.values():
            side.close()
    return ABResult(store.directory, missing, time.perf_counter() - started)


def open_store(request: ABRequest, plan: Any, caps: Any, seed: int) -> RunStore:
    """The run directory: run.json with the spec, the plan, this process's environment and the ab settings."""
    out = request.out or Path(str(default_out(request.spec)) + "-ab")
    ab = {
        "seed": seed,
        "rounds": request.rounds,
        "budget_s": request.budget_s,
        "min_samples": request.min_samples,
        "sides_requested": {s.name: s.to_dict() for s in request.sides},
        **request.judgement,
    }
    store = RunStore.create(out, {**run_meta(request.spec, plan, caps), AB_KEY: ab}, resume=request.resume)
    previous = store.meta.get(AB_KEY, {}).get("sides_requested")
    if previous is not None and previous != ab["sides_requested"]:
        raise SpecError(
            f"{store.directory} holds an ab run of other sides ({previous}); resume it with the same --base, "
            "--new and their environments, or choose another --out."
        )
    (store.directory / "logs").mkdir(exist_ok=True)
    return store


def start_sides(request: ABRequest, directory: Path, plan: Any) -> dict[str, SideProcess]:
    """Both sides' processes, started together (each imports and starts its template while the other
    does), then waited for."""
    sides: dict[str, SideProcess] = {}
    budget = {
        "seconds": request.budget_s,
        "min_seconds": request.budget_s,
        "min_n": request.min_samples,
        "max_n": max(50, request.min_samples),
        "blocks": 1,
        "warmup": 1,
    }
    try:
        for spec in request.sides:
            side = SideProcess(spec, directory / "logs" / f"side-{spec.name}.log")
            side.start(
                {
                    "op": "start",
                    "spec": request.spec.to_dict(),
                    "name": request.spec.name,
                    "directory": str(directory / "sides" / spec.name),
                    "budget": budget,
                    "timeout_s": request.timeout_s,
                    "quality": request.quality,
                    "fit_check": request.fit_check,
                    "online": request.online,
                }
            )
            sides[spec.name] = side
        say("ab: starting both sides (each imports its libraries and starts its own template)")
        for side in sides.values():
            side.wait_ready(READY_TIMEOUT_S)
    except BaseException:
        for side in sides.values():
            side.close(timeout_s=5)
        raise
    return sides


def check_sides(sides: dict[str, SideProcess], runnable: list[Cell]) -> None:
    """Both sides measure what this plan names, with the same measurement version: else one sentence."""
    base, new = sides["base"].ready, sides["new"].ready
    if base["measure_version"] != new["measure_version"]:
        raise SpecError(
            f"the base side measures with measurement version {base['measure_version']} and the new side with "
            f"{new['measure_version']}; their cells are not comparable, so ab refuses them."
        )
    wanted = {c.cell_id for c in runnable}
    for name, ready in (("base", base), ("new", new)):
        theirs = {cid for cid, reason in ready["cells"].items() if reason is None}
        if not wanted <= theirs:
            raise SpecError(
                f"the {name} side plans other cells than this loadbench ({len(wanted - theirs)} of "
                f"{len(wanted)} missing there; measurement version {ready['measure_version']}); run "
                "`loadbench ab` from one of the sides' interpreters."
            )


def side_meta(request: ABRequest, sides: dict[str, SideProcess]) -> dict[str, Any]:
    """What run.json keeps of each side: interpreter, environment difference, versions, template."""
    out: dict[str, Any] = {}
    for spec in request.sides:
        ready = sides[spec.name].ready
        out[spec.name] = {
            "python": ready.get("python", spec.python),
            "env": dict(spec.env),
            "environment": ready.get("environment"),
            "template_s": ready.get("template_s"),
            "isolation": ready.get("isolation"),
            "quality_reference": ready.get("quality_reference"),
            "calibration": ready.get("calibration"),
        }
    return out


def run_rounds(
    request: ABRequest, store: RunStore, sides: dict[str, SideProcess], runnable: list[Cell], seed: int
) -> tuple[str, ...]:
    """Round after round over the cells not yet settled; the keys left without a final record."""
    cells = {c.cell_id: c for c in runnable}
    timeout = request.timeout_s or DEFAULT_TIMEOUT_S[device_of(sides)]
    done = store.final_cell_ids()
    scheduled: set[str] = set()
    active = [c.cell_id for c in runnable]
    for round_no in range(1, request.rounds + 1):
        by_cell = cell_records(store)
        active = [cid for cid in active if not request.settled(by_cell.get(cid, []), len(runnable))]
        if not active:
            break
        begun = time.perf_counter()
        for slot in round_slots(seed, round_no, active):
            key = ab_key(slot.cell_id, slot.side, slot.round)
            scheduled.add(key)
            if key in done:
                continue
            try:
                measure_slot(request, store, sides[slot.side], cells[slot.cell_id], slot, timeout)
            except SideError as exc:
                say(f"ab: {exc}")
                return tuple(sorted(scheduled - store.final_cell_ids()))
        say(
            f"ab: round {round_no}/{request.rounds}: {len(active)} cell(s) x 2 sides in "
            f"{time.perf_counter() - begun:.1f} s"
        )
    return tuple(sorted(scheduled - store.final_cell_ids()))


def measure_slot(
    request: ABRequest, store: RunStore, side: SideProcess, cell: Cell, slot: Slot, timeout_s: float
) -> None:
    """One cell on one side, under a lease; its record appended with the slot's columns."""
    key = ab_key(slot.cell_id, slot.side, slot.round)
    limit = timeout_s * 17 if cell.find_max else timeout_s  # a --find-max cell runs up to 16 probes
    lease, _ = lease_for(limit)
    if not store.claim(key, lease):
        return  # another runner of this directory holds it (or just finished it)
    try:
        try:
            record = side.run(slot.cell_id, first=slot.round == 1, timeout_s=limit + ANSWER_MARGIN_S)
        except KeyboardInterrupt:
            record = side.interrupt()
            if record is not None:
                store.append(with_slot(record, slot))
            raise
        if record is None:
            raise SideError(f"the {slot.side} side gave no record for {cell.label} within {limit:g} s")
        record = with_slot(record, slot)
        store.append(record)
        if record.get("status") != "ok":
            say(
                f"ab: round {slot.round} {slot.side} {cell.label}: {record.get('status')}: {record.get('reason')}"
            )
    finally:
        store.release(key)


def with_slot(record: dict[str, Any], slot: Slot) -> dict[str, Any]:
    """The side's record with where it ran in the schedule; its log path relative to the run directory."""
    out = {**record, "side": slot.side, "ab.round": slot.round, "ab.slot": slot.slot, "ab.first": slot.first}
    if isinstance(out.get("log"), str):
        out["log"] = str(Path("sides") / slot.side / out["log"])
    return out


def device_of(sides: dict[str, SideProcess]) -> str:
    return str(sides["base"].ready.get("device", "cpu"))


def cell_records(store: RunStore) -> dict[str, list[dict[str, Any]]]:
    """The sides' final records so far, by cell."""
    out: dict[str, list[dict[str, Any]]] = {}
    for record in store.records():
        if record.get("side") in AB_SIDES and is_final(record):
            out.setdefault(record["cell_id"], []).append(record)
    return out
