#!/usr/bin/env python
"""The memory estimate's error on a run: estimate / measured - 1 per phase, as every record stores it.

docs/what-fits.md's figures for the estimate's accuracy are this script's output on default runs:

    loadbench run --out runs/default && python scripts/estimate_error.py runs/default

(The measured side is the record's memory peak the run composer compared with the estimate: RSS growth on a
CPU, the allocator's peak on a GPU.)
"""

from __future__ import annotations

import sys

import numpy as np

from bench.analysis.frame import Run
from bench.schema import PHASES


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    records = [r for r in Run.open(argv[0]).records if r.get("status") == "ok"]
    print(f"{len(records)} ok cells of {argv[0]}: estimate / measured - 1")
    print("| phase | cells | min | median | max |\n|---|---:|---:|---:|---:|")
    for phase in PHASES:
        errors = [
            r[f"mem.{phase}.estimate_error"]
            for r in records
            if r.get(f"mem.{phase}.estimate_error") is not None
        ]
        if errors:
            lo, mid, hi = np.percentile(np.array(errors) * 100, [0, 50, 100])
            print(f"| {phase} | {len(errors)} | {lo:+.0f} % | {mid:+.0f} % | {hi:+.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
