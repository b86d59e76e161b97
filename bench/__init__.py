"""Everything that measures: the matrix, the runner, probes, the store and reports.

The stages, each importing only those before it (tests/test_layout.py):
    leaves     schema (the record's vocabulary), errors (exit codes), fileio (atomic writes), units
    plan       spec -> cells -> rules -> plan; models, checkpoints, the memory estimate, the fit check
    measure    what runs inside a cell: workloads, probes, samplers, derived metrics, quality
    run        sessions, executors, the warm template, the results store, progress
    analysis   one run reader and what is made from it: report, compare, recommend, export
    commands   one module per `loadbench` subcommand
    top        cli (assembles the commands), pytest_plugin and pytest_matrix (pytest-benchmark)
"""
