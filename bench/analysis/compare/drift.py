"""Machine drift between two runs: the speed ratio of their calibration probes (run.json's DRIFT_KEY).

Identical code measured on a machine that got slower looks like a regression. Each run records a fixed
probe at its start and end; the ratio of the two runs' probe speeds says how much of a change the machine
alone explains. When it exceeds the minimum effect the verdicts are confounded, and compare judges the
timed metrics a second time with NEW's samples rescaled by the ratio (throughput divided by it, times
multiplied by it): a change that survives the rescaling is the code's, not the machine's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.analysis.compare.runs import RunData
from bench.schema import DRIFT_KEY, DRIFT_POINTS

__all__ = ["Drift", "machine_drift", "probe_speed", "rescale"]


@dataclass(frozen=True)
class Drift:
    """NEW's machine speed over BASE's, or why it is not known."""

    ratio: float | None  # NEW speed / BASE speed (below 1: NEW's machine was slower)
    probe: str | None
    reason: str | None  # why ratio is None ("not measured ...")
    confounded: bool  # |ratio - 1| exceeds the minimum effect

    def describe(self) -> str:
        """The line compare puts first."""
        if self.ratio is None:
            return f"Machine speed: not measured ({self.reason})."
        text = (
            f"Machine speed (probe `{self.probe}`): NEW / BASE = {self.ratio:.3f} "
            f"({(self.ratio - 1) * 100:+.1f} %)"
        )
        if self.confounded:
            return text + (
                "; this exceeds the minimum effect, so the verdicts are confounded with the machine's speed: "
                "read the normalised column (NEW rescaled by the probe) beside them."
            )
        return text + ", within the minimum effect."


def probe_speed(run: RunData) -> tuple[float | None, str | None, str]:
    """(mean speed over the probe's start and end points, probe name, why not) of one run."""
    drift = run.meta.get(DRIFT_KEY)
    if not isinstance(drift, Mapping):
        return None, None, "run.json has no calibration probe"
    speeds: list[float] = []
    names: set[str] = set()
    reasons: list[str] = []
    for point in DRIFT_POINTS:
        probe = drift.get(point)
        if not isinstance(probe, Mapping):
            continue
        speed = probe.get("speed")
        if isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0:
            speeds.append(float(speed))
            names.add(str(probe.get("probe")))
        elif probe.get("reason"):
            reasons.append(f"{point}: {probe['reason']}")
    if not speeds:
        return None, None, "; ".join(reasons) or "the calibration probe recorded no speed"
    if len(names) > 1:
        return None, None, f"the probe changed within the run ({', '.join(sorted(names))})"
    return statistics.fmean(speeds), names.pop(), ""


def machine_drift(base: RunData, new: RunData, min_effect: float) -> Drift:
    """The machine-speed ratio of NEW over BASE, and whether it confounds the verdicts."""
    b_speed, b_probe, b_why = probe_speed(base)
    n_speed, n_probe, n_why = probe_speed(new)
    if b_speed is None or n_speed is None:
        why = f"BASE: {b_why}" if b_speed is None else f"NEW: {n_why}"
        return Drift(None, None, why, False)
    if b_probe != n_probe:
        return Drift(None, None, f"the runs used different probes ({b_probe} and {n_probe})", False)
    ratio = n_speed / b_speed
    return Drift(ratio, b_probe, None, abs(ratio - 1.0) > min_effect)


def rescale(samples: list[Any], ratio: float, unit: str) -> list[Any]:
    """NEW's samples as if measured on BASE's machine: rates divided by the speed ratio, times multiplied."""
    factor = 1.0 / ratio if unit == "tokens/s" else ratio
    return [s * factor if isinstance(s, (int, float)) else s for s in samples]
