"""loadbench: measure which way to load a causal language model on this hardware."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence

from bench.commands import run
from bench.errors import EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, EXIT_REGRESSION
from loader.errors import LoadConfigError

# The subcommands (modules of bench.commands) in the order a user needs them, which is `loadbench --help`'s
# order; each module adds its parser with register(subparsers). A new subcommand is one name here.
COMMANDS = (
    "run",
    "plan",
    "report",
    "compare",
    "ab",
    "recommend",
    "estimate",
    "env",
    "cache",
    "checkpoint",
    "merge",
    "export",
)

EPILOG = (
    f"exit codes: {EXIT_OK} done; {EXIT_REGRESSION} a significant regression (compare, ab); {EXIT_BAD_INPUT} bad "
    f"input (one sentence on stderr); {EXIT_INCOMPLETE} planned cells without a final record; "
    f"{EXIT_INTERRUPTED} Ctrl-C. `loadbench COMMAND --help` for a command's flags."
)


def version() -> str:
    """The installed distribution's version (pyproject), without importing torch or any command."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("loadbench")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed: pip install -e .)"


class CommandsFormatter(argparse.HelpFormatter):
    """argparse measures subcommand names one indent shallower than it prints them, so a long one
    ("checkpoint") pushes its help to the next line: leave room for it, one line per subcommand."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=18)
        self._action_max_length = 16


def build_parser() -> argparse.ArgumentParser:
    """The `loadbench` parser: every subcommand sets `func`, which returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="loadbench",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=CommandsFormatter,
    )
    parser.add_argument("--version", action="version", version=f"loadbench {version()}")
    sub = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bench.commands.{name}").register(sub)
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
