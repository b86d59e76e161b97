"""One `loadbench run`: plan, open the store, start an executor, run, summarise.

The run stage ends with the run directory written; rendering its report belongs to the `run` command
(bench.commands.run), because the run stage never imports analysis.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import EXIT_INCOMPLETE, EXIT_OK, SpecError
from bench.measure.outcome import CellOutcome
from bench.measure.probes import Budget
from bench.plan.checkpoints import read_json
from bench.plan.fit import MemoryBudget
from bench.plan.matrix import Cell, MatrixSpec
from bench.plan.planning import make_plan
from bench.run.accounting import TimeAccounting
from bench.run.compose import ModelFacts, compose_record
from bench.run.executor import Executor, LocalExecutor, RunSettings
from bench.run.progress import Progress, make_progress
from bench.run.records import is_final
from bench.run.store import RunStore, select_shard
from bench.run.weights import materialize_visibly
from bench.schema import MIN_SAMPLES, MISSING_STATUS, TIME_ACCOUNTING_KEY
from bench.units import positive_seconds


@dataclass
class RunRequest:
    spec: MatrixSpec
    out: Path | None = None
    resume: bool = False
    shard: str | None = None
    timeout_s: float | None = None
    budget_s: float | None = None
    min_samples: int = MIN_SAMPLES
    live: bool | None = None
    executor: str = "local"  # or "ray"
    address: str | None = None  # Ray cluster address (None: start a local one)
    fit_check: bool = True  # skip cells predicted not to fit (bench.plan.fit); False: --no-fit-check
    quality: bool = True  # compute the quality reference and quality columns; False: --no-quality
    online: bool = False  # allow fetching the model's config and tokenizer (never weights) from the hub
    accounting: TimeAccounting | None = None  # the caller's stopwatch (the command starts it first)
    # Called once the node is ready and before the first cell: the caller finishes work it overlapped
    # with the template's start (its wait is charged to the `report` stage), so none of it runs beside a cell.
    before_cells: Callable[[], None] | None = None


def git_commit() -> str | None:
    """The commit of the loadbench checkout, when run from one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_environment(caps: Any) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        lb_version = version("loadbench")
    except PackageNotFoundError:
        lb_version = None
    return {**caps.to_dict(), "loadbench_version": lb_version, "git_commit": git_commit()}


def default_out(spec: MatrixSpec) -> Path:
    return Path("runs") / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{spec.name}"


def lanes_for(caps: Any) -> list[str | None]:
    """One lane per visible GPU (its CUDA_VISIBLE_DEVICES value); one CPU lane otherwise."""
    gpus = getattr(caps, "gpus_detail", ()) or ()
    if not gpus:
        return [None] if not caps.host.cuda else ["0"]
    return [str(g.get("uuid") or g.get("index")) for g in gpus]


@dataclass(frozen=True)
class StageResult:
    """Where the run was written, and the planned cells (of this shard) left without a final record."""

    directory: Path
    missing: tuple[str, ...]
    accounting: TimeAccounting | None = None

    @property
    def exit_code(self) -> int:
        """EXIT_INCOMPLETE while any planned cell is missing: a run is not done until every cell is."""
        return EXIT_INCOMPLETE if self.missing else EXIT_OK


def run_matrix(request: RunRequest) -> int:
    """Run a matrix (the Python API: tests, the pytest plugin); 0 once every cell has its final record,
    EXIT_INCOMPLETE when some planned cell has none (it is `missing`; --resume runs it)."""
    return run_stage(request).exit_code


def run_stage(request: RunRequest) -> StageResult:
    """Plan, run every cell of the request's shard through its executor, print the summary; returns the
    run directory and the cells still missing."""
    from bench.plan.capabilities import probe_cached

    if request.min_samples < 2:  # bad input is refused before anything is written
        raise SpecError(
            f"--min-samples={request.min_samples} must be at least 2 (a spread needs two samples)."
        )
    for flag, seconds in (("--timeout", request.timeout_s), ("--budget", request.budget_s)):
        if seconds is not None:  # API callers too: 0 must not fall back to the default, nor nan to no limit
            positive_seconds(seconds, flag)
    clock = request.accounting or TimeAccounting()
    if request.executor == "local":  # the template imports while this process probes, plans and builds
        from bench.run.node import begin_template, template_modules

        begin_template(template_modules(request.spec.quant))
    with clock.stage("probe"):
        caps = probe_cached()
    with clock.stage("checkpoint"):
        plan = make_plan(
            request.spec,
            caps.host,
            online=request.online,
            fit_check=request.fit_check,
            budget=ray_budget(request, caps),
        )
    with clock.stage("store"):
        store, settings, progress, cells = open_run(request, plan, caps)
        executor = make_executor(request, settings, caps)
    done = store.final_cell_ids()
    # The node (warm template, quality reference, calibration) is set up only when a cell will run.
    todo = [c for c in cells if c.skip_reason is None and c.cell_id not in done]
    if todo:
        if plan.model is not None:
            with clock.stage("checkpoint"):
                materialize_visibly(plan.model)  # random weights are built here, never by `plan`
        executor.start()
        for stage, seconds in getattr(executor, "waited_s", {}).items():
            clock.add(stage, seconds)
    else:
        store.set_meta("quality_reference", {"reason": "no cell of this run needed it (none ran)"})
    if request.before_cells is not None:
        with clock.stage("report"):
            request.before_cells()
    progress.start(len(cells), sum(c.cell_id in done for c in cells))
    try:
        with clock.stage("cells"):
            record_skips(store, cells, progress, ModelFacts(settings.model_config, executor.device()))
            if todo:
                executor.run(cells)
    finally:
        progress.stop()
        if todo:
            executor.close()
            for stage, seconds in getattr(executor, "closed_s", {}).items():
                clock.add(stage, seconds)
    how = executor.summary() if todo else "no cell ran, so no worker was started"
    with clock.stage("summary"):
        missing = print_summary(store, cells, how)
    store.set_meta(TIME_ACCOUNTING_KEY, clock.books(store.records()))
    return StageResult(store.directory, missing, clock)


def run_meta(spec: MatrixSpec, plan: Any, caps: Any, shard: str | None = None) -> dict[str, Any]:
    """run.json as a run starts: the spec and its hash, the plan, the checkpoint, this host's environment."""
    return {
        "spec_hash": spec.spec_hash(),
        "spec": spec.to_dict(),
        "plan": plan.to_dict(),
        "shard": shard,
        "checkpoint": {
            "path": str(plan.checkpoint),
            "fingerprint": plan.fingerprint,
            **(
                {"source": plan.model.source, "weights": plan.model.weights, "name": plan.model.name}
                if plan.model is not None
                else {}
            ),
        },
        "environment": run_environment(caps),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def open_run(request: RunRequest, plan: Any, caps: Any) -> tuple[RunStore, RunSettings, Progress, list[Cell]]:
    """The run directory (run.json written), the executor's settings, the progress display and this
    shard's cells."""
    cells = select_shard(plan.cells, request.shard) if request.shard else plan.cells
    out = request.out or default_out(request.spec)
    meta = run_meta(request.spec, plan, caps, request.shard)
    store = RunStore.create(out, meta, resume=request.resume)
    (store.directory / "logs").mkdir(exist_ok=True)
    budget = Budget(
        seconds=request.budget_s or 1.0, min_n=request.min_samples, max_n=max(50, request.min_samples)
    )
    progress = make_progress(request.live)
    settings = RunSettings(
        store=store,
        plan=plan,
        budget=budget,
        timeout_s=request.timeout_s,
        progress=progress,
        model_config=plan.model.config
        if plan.model is not None
        else read_json(plan.checkpoint / "config.json"),
        quality=request.quality,
        bitsandbytes=(
            caps.host.bitsandbytes_version,
            caps.host.bitsandbytes_error,
            tuple(caps.host.bitsandbytes_devices),
        ),
    )
    return store, settings, progress, cells


def ray_budget(request: RunRequest, caps: Any) -> MemoryBudget | None:
    """On Ray the cells run on other nodes, whose free memory the driver does not know: the fit check
    uses --vram-limit when given, else it cannot decide (its columns say so). None: this host's memory."""
    if request.executor != "ray":
        return None
    device = caps.host.device_type
    if request.spec.vram_limit_bytes is not None:
        return MemoryBudget(device, request.spec.vram_limit_bytes, "--vram-limit")
    return MemoryBudget(device, None, "cells run on Ray nodes, whose free memory the driver does not know")


def make_executor(request: RunRequest, settings: RunSettings, caps: Any) -> Executor:
    """The executor the request names; Ray's absence is one sentence before anything runs."""
    if request.executor == "ray":
        from bench.run.ray_executor import RayExecutor, import_ray

        import_ray()
        return RayExecutor(
            settings.store,
            request.spec.model,
            settings.plan.fingerprint,
            settings.progress,
            address=request.address,
            timeout_s=request.timeout_s,
            budget=settings.budget,
            quality=request.quality,
        )
    return LocalExecutor(settings, lanes_for(caps))


def record_skips(store: RunStore, cells: list[Cell], progress: Progress, model: ModelFacts) -> None:
    """Write the final `skipped` record of every planned cell a rule skipped (once per run), with its
    memory estimate: that is how people plan for hardware they do not have."""
    done = store.final_cell_ids()
    host = socket.gethostname()
    for cell in cells:
        if cell.skip_reason and cell.cell_id not in done:
            record = compose_record(cell, CellOutcome("skipped", cell.skip_reason), model=model, host=host)
            store.append(record)
            progress.cell_finished(cell, record)


def print_summary(store: RunStore, cells: list[Any], how: str) -> tuple[str, ...]:
    """The summary table: each planned cell's final record, or `missing` when it has none; returns the
    missing cells' ids."""
    from rich.console import Console
    from rich.table import Table

    from bench.units import fmt_bytes, fmt_rate, fmt_seconds

    wanted = {c.cell_id for c in cells}
    latest: dict[str, dict[str, Any]] = {}
    for record in store.records():  # the first final record of a cell is the one that counts
        if record["cell_id"] in wanted and is_final(record):
            latest.setdefault(record["cell_id"], record)
    missing = tuple(c.cell_id for c in cells if c.cell_id not in latest)
    table = Table(title="loadbench summary")
    modes = len({c.decode for c in cells}) > 1  # the decode mode gets a column when it varies
    head = ("dtype", "quant", "attn", "ckpt", *(("decode mode",) if modes else ()), "status")
    for col in (*head, "load", "prefill", "train", "decode", "peak RSS"):
        table.add_column(
            col, justify="right" if col in ("load", "prefill", "train", "decode", "peak RSS") else "left"
        )
    for cell in cells:
        r = latest.get(cell.cell_id, {})
        peaks = [v for k, v in r.items() if k.startswith("mem.") and k.endswith(".rss_bytes") and v]
        table.add_row(
            cell.dtype,
            cell.quant,
            cell.attn,
            "on" if cell.grad_ckpt else "off",
            *((cell.decode,) if modes else ()),
            r.get("status", MISSING_STATUS),
            fmt_seconds(r.get("load.model_s")),
            fmt_rate(r.get("prefill.tokens_per_s")),
            fmt_rate(r.get("train.tokens_per_s")),
            fmt_rate(r.get("decode.tokens_per_s")),
            fmt_bytes(max(peaks) if peaks else None),
        )
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(table)
    console.print(how)
    if missing:
        console.print(
            f"{len(missing)} planned cell(s) have no final record ({MISSING_STATUS}); "
            "run again with --resume to run them."
        )
    console.print(f"run directory: {store.directory}")
    return missing
