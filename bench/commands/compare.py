"""`loadbench compare BASE NEW`: regression verdicts between two runs; exit 0 none, 1 a regression, 2 bad input.

The verdicts are bench.analysis.compare's; this module holds the flags and the exit code. With --out the
report (or, on bad input, a one-sentence error document) is written atomically and the summary printed.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import EXIT_BAD_INPUT, StoreError
from bench.fileio import atomic_write_text
from bench.run import store

__all__ = ["main", "register", "run_compare"]

# Every input the user can fix. Until bench.run.store raises bench.errors.StoreError (the store stage's
# change) its own StoreError is another class; once merged both names are one class.
BAD_INPUT = (StoreError, store.StoreError)


def _fraction(text: str) -> float:
    """0.05 or 5%."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 0.05 or 5%, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a fraction of 0 or more, got {text!r}")
    return value


def _alpha(text: str) -> float:
    value = _fraction(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"--alpha must be between 0 and 1, got {text!r}")
    return value


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="baseline run directory")
    p.add_argument("new", metavar="NEW", help="run directory to judge against BASE")
    p.add_argument(
        "--min-effect",
        type=_fraction,
        default=0.05,
        help="smallest median change that counts, as a fraction or percent (default 0.05)",
    )
    p.add_argument(
        "--alpha",
        type=_alpha,
        default=0.01,
        help="false-discovery rate of the tests, Benjamini-Hochberg over all tested metrics (default 0.01)",
    )
    p.add_argument(
        "--fail-on-confounded",
        action="store_true",
        help="exit 1 when the runs' calibration probes differ by more than --min-effect (machine drift)",
    )
    p.add_argument("--format", choices=("markdown", "json"), default="markdown", help="output format")
    p.add_argument("--out", metavar="FILE", help="write the report here (default: standard output)")


def run_compare(args: argparse.Namespace) -> int:
    """The `compare` subcommand: 0 no significant regression, 1 a regression, 2 bad input."""
    # imported here, not at the top: every `loadbench` command imports this module to build its parser
    from bench.analysis.compare import compare, render, render_error, summary_line
    from bench.analysis.compare.judging import gc_paused

    if args.out and Path(args.out).is_dir():  # checked first: a report must not replace a directory
        print(f"loadbench compare: --out {args.out!r} is a directory; give a file path.", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        comparison = compare(
            args.base,
            args.new,
            min_effect=args.min_effect,
            alpha=args.alpha,
            fail_on_confounded=args.fail_on_confounded,
        )
    except BAD_INPUT as exc:  # CompareError too: one sentence
        print(f"loadbench compare: {exc}", file=sys.stderr)
        if args.out:
            with contextlib.suppress(OSError):  # the sentence is printed; the error document is a courtesy
                atomic_write_text(args.out, render_error(str(exc), args.format))
        return EXIT_BAD_INPUT
    with gc_paused():
        text = render(comparison, args.format)
    if args.out:
        try:
            atomic_write_text(args.out, text)
        except OSError as exc:
            print(f"loadbench compare: cannot write {args.out} ({exc.strerror or exc}).", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(summary_line(comparison))
    else:
        sys.stdout.write(text)
    return comparison.exit_code


def register(subparsers: Any) -> None:
    """Add `compare` to the loadbench subcommands (argparse subparsers); func returns the exit code."""
    p = subparsers.add_parser(
        "compare",
        help="regression verdicts of two runs; exit 1 on a regression",
        description=(
            "Judge every timed metric of NEW against BASE from their samples (Mann-Whitney U, "
            "Benjamini-Hochberg, minimum effect). Exit 0: no significant regression; 1: at least one; "
            "2: bad input."
        ),
    )
    _add_arguments(p)
    p.set_defaults(func=run_compare)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.commands.compare BASE NEW ...`, the same as `loadbench compare`."""
    parser = argparse.ArgumentParser(prog="loadbench compare")
    _add_arguments(parser)
    return run_compare(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
