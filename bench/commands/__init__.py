"""commands stage: one module per `loadbench` subcommand.

Each module has `register(subparsers)`, which adds its parser and sets `func`, and a `run(args) -> int`
that returns the exit code (bench.errors). bench/cli.py only assembles them; it imports no command's
internals, and this package imports none of its modules, so a command costs nothing until it is chosen.
"""
