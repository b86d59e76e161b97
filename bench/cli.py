"""loadbench: measure which way to load a causal language model on this hardware."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.commands import (
    cache,
    checkpoint,
    compare,
    env,
    estimate,
    export,
    merge,
    plan,
    recommend,
    report,
    run,
)
from bench.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from loader.errors import LoadConfigError

# The subcommands in `loadbench --help` order; each module adds its parser with register(subparsers).
COMMANDS = (run, plan, env, checkpoint, cache, report, compare, recommend, export, estimate, merge)


def build_parser() -> argparse.ArgumentParser:
    """The `loadbench` parser: every subcommand sets `func`, which returns the exit code."""
    parser = argparse.ArgumentParser(prog="loadbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; bad input (a BenchError, a loader refusal, a bad value) is one sentence, exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (LoadConfigError, ValueError) as exc:  # BenchError derives from LoadConfigError
        print(f"loadbench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("loadbench: interrupted; run again with --resume to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
