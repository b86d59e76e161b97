"""One error tree for everything bench refuses, and the exit codes, defined once.

A BenchError's message is one sentence a user can act on; the CLI prints it and exits EXIT_BAD_INPUT.
It derives from loader's LoadConfigError so a bad knob and a bad run directory reach the user the same way.
"""

from __future__ import annotations

from loader.errors import LoadConfigError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INCOMPLETE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REGRESSION",
    "BenchError",
    "CheckpointError",
    "CompareError",
    "RecommendError",
    "ReportError",
    "SpecError",
    "StoreError",
]

EXIT_OK = 0
EXIT_REGRESSION = 1  # compare found a significant regression
EXIT_BAD_INPUT = 2  # the input cannot be used as asked (one sentence on stderr)
EXIT_INCOMPLETE = (
    3  # `run` ended with planned cells that have no final record (`missing`; --resume runs them)
)
EXIT_INTERRUPTED = 130  # Ctrl-C


class BenchError(LoadConfigError):
    """Something bench cannot do as asked; the message is one sentence naming the field and the fix."""


class SpecError(BenchError):
    """A matrix spec, recipe or CLI value that cannot be planned."""


class CheckpointError(BenchError):
    """A checkpoint that cannot be built or read."""


class StoreError(BenchError):
    """A run directory that cannot be used as asked."""


class ReportError(StoreError):
    """A report that cannot be rendered as asked."""


class CompareError(StoreError):
    """Two runs that cannot be compared as asked."""


class RecommendError(StoreError):
    """A recommendation request that cannot be answered as asked."""
