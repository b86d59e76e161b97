"""Two real runs of identical code, compared: the A/A that a gate on this machine must pass.

A benchmark, not a unit test: its verdict measures the machine as much as the code. On a shared VM one
cell moves 5-16 % between runs and a few by 25-60 % (docs/statistics.md, "What it can see: real runs"), so this can fail
there while compare is right; the unit tests of the rule are in tests/test_compare_spread.py. 12 cells
(dtype x quant x attn, prefill only) so compare can estimate each metric's run-to-run spread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.analysis.compare import EXIT_OK, compare, render_markdown

pytestmark = pytest.mark.perf


def test_two_real_runs_of_the_same_configuration_pass_compare(
    benchmark: Any, tmp_path: Path, tiny_llama: Path
) -> None:
    from bench.plan.matrix import MatrixSpec, Shape
    from bench.run.session import RunRequest, run_matrix

    spec = MatrixSpec(
        model=str(tiny_llama),
        dtype=("float32", "bfloat16"),
        attn=("eager", "sdpa"),
        quant=("none", "nf4", "8bit"),
        workloads=("prefill",),
        shape=Shape(2, 32, 2),
        name="a-a",
    )

    def two_runs() -> Any:
        for name in ("a", "b"):
            assert run_matrix(RunRequest(spec=spec, out=tmp_path / name, budget_s=1.0, live=False)) == 0
        return compare(tmp_path / "a", tmp_path / "b")

    comparison = benchmark.pedantic(two_runs, rounds=1, iterations=1)
    benchmark.extra_info.update(comparison.counts())
    print(render_markdown(comparison))
    assert comparison.matched_by == "cell_id" and comparison.cells_matched == 12
    assert comparison.exit_code == EXIT_OK, render_markdown(comparison)
