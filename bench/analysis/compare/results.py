"""What a comparison found: a verdict per metric of each matched cell, status changes, and the exit code."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from bench.analysis.compare.drift import Drift
from bench.errors import EXIT_OK, EXIT_REGRESSION

__all__ = ["Comparison", "MetricResult", "StatusChange", "worse_by"]


@dataclass(slots=True)
class MetricResult:
    """The verdict on one metric of one matched cell."""

    cell: str  # the cell's label (dtype/quant/attn/ckpt/cache)
    base_cell_id: str
    new_cell_id: str
    metric: str
    kind: str  # "samples" (tested), "single value" (min effect only)
    better: str  # "higher" or "lower"
    base: float | None  # median (or the single value)
    new: float | None
    change: float | None  # new / base - 1
    n_base: int
    n_new: int
    p: float | None = None
    q: float | None = None
    verdict: str = "not judged"  # regression, improvement, no change, not judged
    reason: str | None = None
    needed: float | None = None  # the median change this metric had to show: max(min effect, relative IQR)
    spread_needed: float | None = (
        None  # ... and beyond the metric's run-to-run spread (z spreads), when known
    )
    normalised_change: float | None = None  # with NEW rescaled by the machine-speed ratio (confounded runs)
    normalised_verdict: str | None = None


@dataclass
class StatusChange:
    """A matched cell whose status differs between BASE and NEW."""

    cell: str
    base_cell_id: str
    new_cell_id: str
    base_status: str
    new_status: str
    verdict: str  # regression, improvement, changed
    reason: str | None


@dataclass
class Comparison:
    """Everything compare found; the renderers and the exit code read only this."""

    base_dir: str
    new_dir: str
    model: str | None
    matched_by: str
    notes: list[str]
    environment: list[tuple[str, Any, Any]]  # (field, BASE, NEW) where they differ
    commits: tuple[Any, Any]
    cells_matched: int
    base_only: list[str]
    new_only: list[str]
    results: list[MetricResult]
    status_changes: list[StatusChange]
    min_effect: float
    alpha: float
    tests: int  # metrics tested (the BH family size)
    drift: Drift | None = None  # the machine-speed ratio of the two runs' calibration probes
    fail_on_confounded: bool = False  # exit 1 when the drift confounds the verdicts

    @property
    def confounded(self) -> bool:
        """The machines' speeds differ by more than the minimum effect: verdicts mix code and machine."""
        return self.drift is not None and self.drift.confounded

    def of(self, verdict: str) -> list[MetricResult]:
        """The metric results with this verdict, in judging order."""
        return [r for r in self.results if r.verdict == verdict]

    @property
    def regressions(self) -> list[MetricResult]:
        return sorted(self.of("regression"), key=lambda r: -worse_by(r))

    @property
    def improvements(self) -> list[MetricResult]:
        return sorted(self.of("improvement"), key=worse_by)

    @property
    def status_regressions(self) -> list[StatusChange]:
        return [s for s in self.status_changes if s.verdict == "regression"]

    @property
    def status_improvements(self) -> list[StatusChange]:
        return [s for s in self.status_changes if s.verdict == "improvement"]

    def counts(self) -> dict[str, int]:
        """Verdict counts, not-judged reasons and matching counts (the JSON summary)."""
        not_judged = self.of("not judged")
        reasons: dict[str, int] = defaultdict(int)
        for r in not_judged:
            reasons[r.reason or "?"] += 1
        return {
            "regressions": len(self.of("regression")) + len(self.status_regressions),
            "improvements": len(self.of("improvement")) + len(self.status_improvements),
            "unchanged": len(self.of("no change")),
            "not_judged": len(not_judged),
            **{f"not_judged.{k}": v for k, v in sorted(reasons.items())},
            "cells_matched": self.cells_matched,
            "cells_only_in_base": len(self.base_only),
            "cells_only_in_new": len(self.new_only),
            "tests": self.tests,
            **({"normalised_regressions": len(self.gate_regressions)} if self.confounded else {}),
        }

    @property
    def gate_regressions(self) -> list[MetricResult]:
        """The metric regressions the exit code rests on: when the machine's drift confounds the raw
        verdicts, those that remain after rescaling NEW by the probe (the normalised column)."""
        if self.confounded:
            return [r for r in self.results if r.normalised_verdict == "regression"]
        return self.of("regression")

    @property
    def exit_code(self) -> int:
        """1 when a metric (normalised, when confounded) or a status regressed, or when the drift confounds
        the verdicts and fail_on_confounded is set; else 0."""
        confounded_fail = self.fail_on_confounded and self.confounded
        failed = self.gate_regressions or self.status_regressions or confounded_fail
        return EXIT_REGRESSION if failed else EXIT_OK


def worse_by(r: MetricResult) -> float:
    """How much worse NEW is, as a fraction (negative: better)."""
    if r.change is None:
        return 0.0
    return r.change if r.better == "lower" else -r.change
