#!/usr/bin/env python
"""How long the warm template takes to start, with the collector paused while it imports (as `loadbench
run` starts it: bench.run.template.gc_pause / gc_freeze) and without, in alternating fresh processes.

    python scripts/template_start.py --pairs 4
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

import bench.run.node as node


def start_once(paused: bool) -> float:
    """Seconds from begin_template to a warm template, in this (fresh) process."""
    if not paused:
        node.TEMPLATE_FIRST = node.TEMPLATE_LAST = "os"  # the forkserver imports nothing around the template
    node.begin_template(node.template_modules(["none"]))
    _, elapsed, _ = node.start_template()
    node.stop_template()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=4, help="alternating pairs of fresh starts (default 4)")
    parser.add_argument("--once", choices=("paused", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.once:
        print(start_once(args.once == "paused"))
        return 0
    times: dict[str, list[float]] = {"plain": [], "paused": []}
    for _ in range(args.pairs):
        for how in times:
            out = subprocess.run([sys.executable, __file__, "--once", how], capture_output=True, text=True)
            times[how].append(float(out.stdout.split()[-1]))
    print("| collector while the template imports | starts | median | range |")
    print("|---|---:|---:|---:|")
    for how, values in times.items():
        label = "paused, then frozen (loadbench run)" if how == "paused" else "running (Python's default)"
        print(
            f"| {label} | {len(values)} | {statistics.median(values):.2f} s | {min(values):.2f}-{max(values):.2f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
