"""Where a 4-cell CPU sweep's time goes, and the same sweep by optimum-benchmark when it is installed.

Prints the books (run.json `time_accounting`) of `loadbench run` started as a user starts it (a fresh
process, so interpreter start-up counts), and asserts the harness's own share target of issue 15.

The ratio (issue 15 item 3): optimum-benchmark's wall time for the same 4 cells (same checkpoint, shape,
dtypes, attentions, CPU, one thread; its `inference` and `training` scenarios, `process` launcher), run by
scripts/optimum_benchmark_sweep.py in a fresh process of an interpreter that has optimum-benchmark, over
loadbench's wall time for its sweep, both from one run each. optimum-benchmark is found through
LOADBENCH_OB_PYTHON (the python of a venv that has it: it pins its own transformers and hydra, so it is best kept
out of loadbench's venv) or else in this interpreter; LOADBENCH_OB_SAMPLES=default|matched picks its sample
counts (default: optimum-benchmark's own defaults; matched: loadbench's 10 samples per metric).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.perf
ROOT = Path(__file__).resolve().parents[2]
SWEEP = ["--dtype", "float32,bfloat16", "--quant", "none", "--attn", "eager,sdpa", "--grad-ckpt", "off"]
HARNESS_SHARE_TARGET = 1 / 3
OB_DRIVER = ROOT / "scripts" / "optimum_benchmark_sweep.py"


def loadbench_run(out: Path) -> dict:
    """run.json of `loadbench run SWEEP` in a fresh process, with the process's wall time as `outer_wall_s`."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    cmd = [sys.executable, "-m", "bench.cli", "run", *SWEEP, "--no-live", "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True, timeout=900)
    run = json.loads((out / "run.json").read_text())
    run["outer_wall_s"] = time.perf_counter() - start
    return run


def loadbench_books(out: Path) -> dict:
    return loadbench_run(out)["time_accounting"]


def optimum_benchmark_python() -> tuple[str | None, str]:
    """The interpreter to run optimum-benchmark with, or None and why there is none."""
    env_python = os.environ.get("LOADBENCH_OB_PYTHON")
    if env_python:
        probe = subprocess.run(
            [env_python, "-c", "import optimum_benchmark"], capture_output=True, text=True, timeout=120
        )
        if probe.returncode != 0:
            return (
                None,
                f"LOADBENCH_OB_PYTHON={env_python} cannot import optimum_benchmark: {probe.stderr[-300:]}",
            )
        return env_python, f"LOADBENCH_OB_PYTHON={env_python}"
    if importlib.util.find_spec("optimum_benchmark") is not None:
        return sys.executable, "this interpreter"
    return None, (
        "optimum-benchmark is not installed here and LOADBENCH_OB_PYTHON is not set, so there is no ratio "
        "(docs/architecture.md, 'Against optimum-benchmark': a separate venv with optimum-benchmark==0.6.0)"
    )


def optimum_benchmark_sweep(python: str, checkpoint: str, spec: dict) -> dict:
    """The driver's JSON (last stdout line: the Trainer prints to stdout too), plus `outer_wall_s`."""
    shape = spec["shape"]
    cmd = [
        python,
        str(OB_DRIVER),
        checkpoint,
        "--samples",
        os.environ.get("LOADBENCH_OB_SAMPLES", "default"),
        "--dtype",
        ",".join(spec["dtype"]),
        "--attn",
        ",".join(spec["attn"]),
        "--batch",
        str(shape["batch"]),
        "--seq",
        str(shape["seq"]),
        "--new-tokens",
        str(shape["new_tokens"]),
    ]
    # Its own environment: not loadbench's PYTHONPATH (the driver imports nothing from loadbench).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    outer = time.perf_counter() - start
    assert proc.returncode == 0, f"optimum-benchmark sweep failed:\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["outer_wall_s"] = outer
    return result


def test_four_cell_sweep_accounting(benchmark: Any, tmp_path: Path) -> None:
    # One round through pytest-benchmark, so `nox -s perf` (--benchmark-only) runs it and perf.json keeps
    # the books beside the wall time.
    books = benchmark.pedantic(loadbench_books, args=(tmp_path / "run",), rounds=1, iterations=1)
    benchmark.extra_info.update(books)
    print("\nloadbench 4-cell CPU sweep:", json.dumps(books, indent=1))
    assert books["harness_share"] <= HARNESS_SHARE_TARGET, (
        f"the harness took {books['harness_share']:.0%} of the sweep's {books['wall_s']:.1f} s"
    )


def test_optimum_benchmark_ratio(benchmark: Any, tmp_path: Path) -> None:
    python, where = optimum_benchmark_python()
    if python is None:
        pytest.skip(where)
    run = benchmark.pedantic(loadbench_run, args=(tmp_path / "run",), rounds=1, iterations=1)
    ob = optimum_benchmark_sweep(python, run["checkpoint"]["path"], run["spec"])
    books = run["time_accounting"]
    print(f"\noptimum-benchmark ({where}, samples {ob['samples']}):", json.dumps(ob, indent=1))
    print("loadbench 4-cell CPU sweep:", json.dumps(books, indent=1))
    ratio = ob["outer_wall_s"] / run["outer_wall_s"]
    print(
        f"optimum-benchmark {ob['outer_wall_s']:.1f} s (inference {ob['scenario_wall_s'].get('inference', 0):.1f} s"
        f", training {ob['scenario_wall_s'].get('training', 0):.1f} s) / loadbench {run['outer_wall_s']:.1f} s"
        f" = {ratio:.2f}"
    )
    benchmark.extra_info.update(
        {
            "optimum_benchmark_wall_s": ob["outer_wall_s"],
            "loadbench_wall_s": run["outer_wall_s"],
            "ratio": ratio,
        }
    )
    assert len(ob["runs"]) == 2 * len(run["plan"])
