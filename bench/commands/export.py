"""`loadbench export DIR --format pytest-benchmark|github-action-benchmark [--out FILE]`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.analysis.export import FORMATS, export_github_action_benchmark, export_pytest_benchmark
from bench.errors import EXIT_BAD_INPUT, EXIT_OK, StoreError
from bench.run import store

__all__ = ["register", "run_export"]

# Every input the user can fix. Until bench.run.store raises bench.errors.StoreError (the store stage's
# change) its own StoreError is another class; once merged both names are one class.
BAD_INPUT = (StoreError, store.StoreError)


def run_export(args: argparse.Namespace) -> int:
    """Write the export and print its path(s); a run that cannot be read or written is exit 2."""
    try:
        if args.format == "pytest-benchmark":
            paths = [export_pytest_benchmark(args.dir, args.out)]
        else:
            paths = list(export_github_action_benchmark(args.dir, args.out).values())
    except BAD_INPUT as exc:
        print(f"loadbench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"loadbench: cannot write the export to {args.out} ({exc.strerror or exc}).", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in paths:
        print(path)
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add `loadbench export DIR --format pytest-benchmark|github-action-benchmark [--out FILE]`."""
    parser = subparsers.add_parser(
        "export",
        help="a run as pytest-benchmark or github-action-benchmark JSON",
        description=(
            "pytest-benchmark: one JSON file that `pytest-benchmark compare` reads (--out FILE, default "
            "DIR/pytest-benchmark.json). github-action-benchmark: two files, PREFIX.bigger.json for "
            "customBiggerIsBetter (tok/s) and PREFIX.smaller.json for customSmallerIsBetter (seconds, bytes) "
            "(--out PREFIX, default DIR/github-action-benchmark)."
        ),
    )
    parser.add_argument("dir", metavar="DIR", help="a run directory")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the tool whose JSON to write")
    parser.add_argument(
        "--out", metavar="FILE", help="output file (pytest-benchmark) or prefix (github-action-benchmark)"
    )
    parser.set_defaults(func=run_export)
