"""analysis stage: one run reader (frame) and what is made from it: report/, compare/, ab/ (an ab run's
paired verdicts, stopping rule and ab.md), recommend, export;
values (cell values as every output prints them) and fits (the --find-max rows) are shared by them.

Nothing here imports bench.commands; the subcommands (flags, exit codes) live there.
"""
