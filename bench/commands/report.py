"""`loadbench report DIR [--out DIR]`: write records.parquet, records.csv, report.md and report.html."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.analysis.ab import is_ab_run, render_ab
from bench.analysis.report import render
from bench.errors import EXIT_BAD_INPUT, EXIT_OK, StoreError
from bench.run import store

__all__ = ["register", "run_report"]

# Every input the user can fix. Until bench.run.store raises bench.errors.StoreError (the store stage's
# change) its own StoreError is another class; once merged both names are one class.
BAD_INPUT = (StoreError, store.StoreError)


def run_report(args: argparse.Namespace) -> int:
    """Render and print the paths written; a run that cannot be read or written is one sentence, exit 2."""
    try:
        if is_ab_run(store.RunStore.open(args.dir).meta):  # an ab run: its verdicts, ab.md and ab.json
            paths, _ = render_ab(args.dir, args.out)
        else:
            paths = render(args.dir, args.out)
    except BAD_INPUT as exc:
        print(f"loadbench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        where = args.out or args.dir
        print(f"loadbench: cannot write the report into {where} ({exc.strerror or exc}).", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in paths.values():
        print(path)
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add `loadbench report DIR [--out DIR]`."""
    parser = subparsers.add_parser(
        "report",
        help="render a run directory's tables and plots again",
        description="Write records.parquet, records.csv, report.md and report.html for a run directory.",
    )
    parser.add_argument("dir", metavar="DIR", help="a run directory (holds run.json and records.jsonl)")
    parser.add_argument("--out", metavar="DIR", help="where to write the files (default: DIR itself)")
    parser.set_defaults(func=run_report)
