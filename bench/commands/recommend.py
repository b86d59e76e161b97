"""`loadbench recommend DIR --vram 24GiB --task train|infer [--objective ...] [--margin 0.1]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench import units
from bench.analysis.recommend import OBJECTIVES, TASKS, parse_margin, print_recommendation, recommend
from bench.errors import EXIT_BAD_INPUT, EXIT_OK

__all__ = ["register", "run_recommend"]


def run_recommend(args: argparse.Namespace) -> int:
    """Print the pick, the runner-up and the reasons; a request that cannot be answered is exit 2."""
    from rich.console import Console

    try:
        vram = args.vram if isinstance(args.vram, int) else units.parse_size(args.vram, "--vram")
        margin = parse_margin(args.margin)
        rec = recommend(Path(args.dir), vram, args.task, args.objective, margin)
    except ValueError as exc:  # StoreError, RecommendError, LoadConfigError: one sentence each
        print(f"loadbench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print_recommendation(rec, Console(width=None if sys.stdout.isatty() else 160))
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add `loadbench recommend DIR --vram 24GiB --task train|infer [--objective ...] [--margin 0.1]`."""
    parser = subparsers.add_parser(
        "recommend",
        help="choose a configuration for a memory budget and a task",
        description="Pick the best measured configuration whose peak memory fits the budget.",
    )
    parser.add_argument("dir", metavar="DIR", help="a run directory")
    parser.add_argument(
        "--vram",
        required=True,
        type=units.argtype(units.parse_size, "--vram"),
        help="memory of the target device, e.g. 24GiB, 16GB, 80G, 512MiB",
    )
    parser.add_argument(
        "--task", required=True, choices=TASKS, help="train (train step) or infer (prefill+decode)"
    )
    parser.add_argument("--objective", default="throughput", choices=OBJECTIVES, help="default: throughput")
    parser.add_argument("--margin", default="0.1", help="fraction of memory kept free (default 0.1; or 10%%)")
    parser.set_defaults(func=run_recommend)
