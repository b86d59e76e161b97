"""analysis stage: one run reader (frame) and what is made from it: report/, compare/, recommend, export.

Nothing here imports bench.commands; the subcommands (flags, exit codes) live there.
"""
