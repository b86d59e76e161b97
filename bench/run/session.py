"""One `loadbench run`: plan, open the store, start the warm template, run, summarise."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure.probes import Budget
from bench.measure.sampler import NvmlSampler, gpu_state, handle_for, import_nvml
from bench.plan.checkpoints import cache_root
from bench.plan.matrix import MatrixSpec, SpecError
from bench.plan.planning import make_plan
from bench.run.progress import make_progress
from bench.run.runner import (
    Runner,
    RunOptions,
    record_skips,
    run_calibration,
    run_quality_reference,
    start_template,
)
from bench.run.store import RunStore, select_shard


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
    faults: dict[str, str] | None = None  # test-only fault injection, by cell_id or label
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
    from bench.plan.capabilities import probe_cached

    if request.min_samples < 2:  # bad input is refused before anything is written
        raise SpecError(
            f"--min-samples={request.min_samples} must be at least 2 (a spread needs two samples)."
        )
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
    if request.executor == "ray":
        summary = _run_on_ray(request, store, plan, cells, budget, progress, done)
    else:
        summary = _run_locally(request, store, plan, cells, budget, progress, caps, done)
    print_summary(store, cells, summary)
    from bench.analysis.report import render

    paths = render(store.directory)
    print(f"report: {paths['markdown']} · {paths['html']}")
    return 0


def _run_on_ray(request, store, plan, cells, budget, progress, done) -> str:  # type: ignore[no-untyped-def]
    from bench.run.ray_executor import RayExecutor, import_ray

    import_ray()  # one sentence before anything runs when Ray is missing
    executor = RayExecutor(
        store,
        request.spec.model,
        plan.fingerprint,
        progress,
        address=request.address,
        timeout_s=request.timeout_s,
        budget=budget,
        faults=request.faults,
    )
    store.set_meta("executor", {"kind": "ray", "address": request.address})
    progress.start(len(cells), sum(c.cell_id in done for c in cells))
    try:
        config = json.loads((plan.checkpoint / "config.json").read_text())
        record_skips(store, cells, progress, config, "cuda" if executor.gpu_cluster() else "cpu")
        executor.run(cells)
    finally:
        progress.stop()
    return "ray executor: each node forks cells from its own warm template"


def _run_locally(request, store, plan, cells, budget, progress, caps, done) -> str:  # type: ignore[no-untyped-def]
    ctx, template_s, isolation = start_template()
    lanes = lanes_for(caps)
    samplers = gpu_samplers(lanes)
    options = RunOptions(
        timeout_s=request.timeout_s,
        budget=budget,
        lanes=lanes,
        faults=request.faults or {},
        samplers=samplers,
        model_config=json.loads((plan.checkpoint / "config.json").read_text()),
    )
    store.set_meta("executor", {"kind": "local", "lanes": lanes})
    store.set_meta("template_startup_s", template_s)
    store.set_meta("isolation", isolation)
    logs = store.directory / "logs"
    # Cached beside the checkpoints, not in the run directory: T × vocab float32 is ~1 GB for 150k vocabularies.
    ref_path = (
        cache_root() / "quality" / f"{plan.fingerprint}-{'cpu' if lanes[0] is None else 'cuda'}.safetensors"
    )
    ref_path.parent.mkdir(parents=True, exist_ok=True)
    reference = run_quality_reference(ctx, plan.checkpoint, lanes[0], ref_path, logs / "quality.log")
    store.set_meta("quality_reference", reference)
    options.quality_ref = reference.get("path")
    if lanes[0] is not None:
        options.calibration = run_calibration(ctx, lanes[0], logs / "calibration.log")
        store.set_meta("calibration", options.calibration)
        store.set_meta(
            "gpu_state_before", {lane: gpu_state(s.nvml, s.handle) for lane, s in samplers.items()}
        )
    runner = Runner(store, plan.checkpoint, options, progress, ctx)
    progress.start(len(cells), sum(c.cell_id in done for c in cells))
    try:
        record_skips(store, cells, progress, options.model_config, "cpu" if lanes[0] is None else "cuda")
        runner.run(cells)
    finally:
        progress.stop()
        for sampler in samplers.values():
            sampler.stop()
        if samplers:
            store.set_meta(
                "gpu_state_after", {lane: gpu_state(s.nvml, s.handle) for lane, s in samplers.items()}
            )
    return f"worker template ({isolation}) started in {template_s:.2f} s"


def gpu_samplers(lanes: list[str | None]) -> dict[int, NvmlSampler]:
    """One NVML sampler thread per GPU lane; none without NVML (the records then say why)."""
    if lanes[0] is None:
        return {}
    nvml = import_nvml()
    if nvml is None:
        return {}
    return {
        i: NvmlSampler(nvml, handle_for(nvml, lane)).start()
        for i, lane in enumerate(lanes)
        if lane is not None
    }


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
