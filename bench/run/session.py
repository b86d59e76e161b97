"""One `loadbench run`: plan, open the store, start an executor, run, summarise.

The run stage ends with the run directory written; rendering its report belongs to the `run` command
(bench.commands.run), because the run stage never imports analysis.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import SpecError
from bench.measure.outcome import CellOutcome
from bench.measure.probes import Budget
from bench.plan.checkpoints import read_json
from bench.plan.matrix import Cell, MatrixSpec
from bench.plan.planning import make_plan
from bench.run.compose import ModelFacts, compose_record
from bench.run.executor import Executor, LocalExecutor, RunSettings
from bench.run.progress import Progress, make_progress
from bench.run.store import RunStore, select_shard
from bench.units import positive_seconds


@dataclass
class RunRequest:
    spec: MatrixSpec
    out: Path | None = None
    resume: bool = False
    shard: str | None = None
    timeout_s: float | None = None
    budget_s: float | None = None
    min_samples: int = 5
    live: bool | None = None
    executor: str = "local"  # or "ray"
    address: str | None = None  # Ray cluster address (None: start a local one)


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


def run_matrix(request: RunRequest) -> int:
    """Run a matrix (the Python API: tests, the pytest plugin); 0 once every cell has its record."""
    run_stage(request)
    return 0


def run_stage(request: RunRequest) -> Path:
    """Plan, run every cell of the request's shard through its executor, print the summary; returns the
    run directory."""
    from bench.plan.capabilities import probe_cached

    if request.min_samples < 2:  # bad input is refused before anything is written
        raise SpecError(
            f"--min-samples={request.min_samples} must be at least 2 (a spread needs two samples)."
        )
    for flag, seconds in (("--timeout", request.timeout_s), ("--budget", request.budget_s)):
        if seconds is not None:  # API callers too: 0 must not fall back to the default, nor nan to no limit
            positive_seconds(seconds, flag)
    caps = probe_cached()
    plan = make_plan(request.spec, caps.host)
    cells = select_shard(plan.cells, request.shard) if request.shard else plan.cells
    out = request.out or default_out(request.spec)
    meta = {
        "spec_hash": request.spec.spec_hash(),
        "spec": request.spec.to_dict(),
        "plan": plan.to_dict(),
        "shard": request.shard,
        "checkpoint": {"path": str(plan.checkpoint), "fingerprint": plan.fingerprint},
        "environment": run_environment(caps),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    store = RunStore.create(out, meta, resume=request.resume)
    (store.directory / "logs").mkdir(exist_ok=True)
    budget = Budget(
        seconds=request.budget_s or 1.0, min_n=request.min_samples, max_n=max(50, request.min_samples)
    )
    progress = make_progress(request.live)
    done = store.final_cell_ids()
    settings = RunSettings(
        store=store,
        plan=plan,
        budget=budget,
        timeout_s=request.timeout_s,
        progress=progress,
        model_config=read_json(plan.checkpoint / "config.json"),
    )
    executor = make_executor(request, settings, caps)
    print(
        f"loadbench: {len(cells)} cells planned ({request.spec.name}) into {store.directory}; "
        f"starting the {request.executor} executor",
        flush=True,
    )
    executor.start()
    progress.start(len(cells), sum(c.cell_id in done for c in cells))
    try:
        record_skips(store, cells, progress, ModelFacts(settings.model_config, executor.device()))
        executor.run(cells)
    finally:
        progress.stop()
        executor.close()
    print_summary(store, cells, executor.summary())
    return store.directory


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


def print_summary(store: RunStore, cells: list[Any], how: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from bench.units import fmt_bytes, fmt_rate, fmt_seconds

    wanted = {c.cell_id for c in cells}
    latest = {r["cell_id"]: r for r in store.records() if r["cell_id"] in wanted}
    table = Table(title="loadbench summary")
    for col in ("dtype", "quant", "attn", "ckpt", "status", "load", "prefill", "train", "decode", "peak RSS"):
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
            r.get("status", "-"),
            fmt_seconds(r.get("load.model_s")),
            fmt_rate(r.get("prefill.tokens_per_s")),
            fmt_rate(r.get("train.tokens_per_s")),
            fmt_rate(r.get("decode.tokens_per_s")),
            fmt_bytes(max(peaks) if peaks else None),
        )
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(table)
    console.print(how)
    console.print(f"run directory: {store.directory}")
