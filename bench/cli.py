"""loadbench: measure which way to load a causal language model on this hardware."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from bench.commands import (
    ab,
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
COMMANDS = (run, plan, env, checkpoint, cache, report, compare, ab, recommend, export, estimate, merge)


def build_parser() -> argparse.ArgumentParser:
    """The `loadbench` parser: every subcommand sets `func`, which returns the exit code."""
    parser = argparse.ArgumentParser(prog="loadbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; bad input (a BenchError, a loader refusal, a bad value) is one sentence, exit 2.

    Called for the process's own command line (`argv` None: the `loadbench` script, `python -m bench.cli`),
    `run` ends the process itself once it is done: see `exit_now`."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
    except (LoadConfigError, ValueError) as exc:  # BenchError derives from LoadConfigError
        print(f"loadbench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("loadbench: interrupted; run again with --resume to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    if argv is None and args.func is run.run_command:
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """End the process as `sys.exit` would, less the interpreter's teardown of every imported module
    (pandas, matplotlib, pyarrow: a quarter of a second after the run's last line, on no one's books):
    the atexit handlers run and the standard streams are flushed first, and everything the run wrote is
    already closed and fsynced. Never for an in-process caller (tests, the API): only `main()`'s own."""
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
