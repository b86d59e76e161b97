"""Where a 4-cell CPU sweep's time goes, and the same sweep by optimum-benchmark when it is installed.

Prints the books (run.json `time_accounting`) of `loadbench run` started as a user starts it (a fresh
process, so interpreter start-up counts), and asserts the harness's own share target of issue 15.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.perf
ROOT = Path(__file__).resolve().parents[2]
SWEEP = ["--dtype", "float32,bfloat16", "--quant", "none", "--attn", "eager,sdpa", "--grad-ckpt", "off"]
HARNESS_SHARE_TARGET = 1 / 3


def loadbench_books(out: Path) -> dict:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    cmd = [sys.executable, "-m", "bench.cli", "run", *SWEEP, "--no-live", "--out", str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True, timeout=900)
    return json.loads((out / "run.json").read_text())["time_accounting"]


def test_four_cell_sweep_accounting(tmp_path: Path) -> None:
    books = loadbench_books(tmp_path / "run")
    print("\nloadbench 4-cell CPU sweep:", json.dumps(books, indent=1))
    if importlib.util.find_spec("optimum_benchmark") is None:
        print("optimum-benchmark: not installed, so no ratio")
    else:
        print("optimum-benchmark: installed, but driving its sweep from here is not written yet; no ratio")
    assert books["harness_share"] <= HARNESS_SHARE_TARGET, (
        f"the harness took {books['harness_share']:.0%} of the sweep's {books['wall_s']:.1f} s"
    )


def test_optimum_benchmark_ratio() -> None:
    if importlib.util.find_spec("optimum_benchmark") is None:
        pytest.skip("optimum-benchmark is not installed (pip install optimum-benchmark) so there is no ratio")
    pytest.skip(
        "optimum-benchmark is installed, but its side of the sweep is not written yet (issue 15 item 3)"
    )
