"""The machine-drift probe (bench.measure.calibrate.drift_probe) and run.json's record of it."""

from __future__ import annotations

import statistics

import pytest
import torch

from bench.measure.calibrate import drift_probe
from bench.run.node import drift_record


def test_cpu_probe_measures_a_fixed_single_thread_matmul() -> None:
    threads = torch.get_num_threads()
    try:
        probe = drift_probe()
    finally:
        torch.set_num_threads(threads)
    assert probe["probe"] == "cpu-matmul-fp32-1t" and probe["unit"] == "GFLOP/s"
    assert len(probe["samples"]) >= 10
    assert probe["speed"] == pytest.approx(statistics.median(probe["samples"]), rel=0.05)
    assert 0.1 < probe["speed"] < 1000  # one core of any CPU this runs on, in GFLOP/s
    assert probe["at"].endswith("+00:00")


def test_probe_failure_is_a_reason_not_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.measure import calibrate

    def broken() -> dict[str, object]:
        raise RuntimeError("no BLAS")

    monkeypatch.setattr(calibrate, "_cpu_drift", broken)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    probe = drift_probe()
    assert "speed" not in probe and "no BLAS" in probe["reason"]


def test_drift_record_ratio_only_for_the_same_probe() -> None:
    start = {"probe": "cpu-matmul-fp32-1t", "speed": 10.0}
    assert drift_record(start, None) == {"start": start, "end": None, "end_over_start": None}
    slower = {"probe": "cpu-matmul-fp32-1t", "speed": 8.0}
    assert drift_record(start, slower)["end_over_start"] == pytest.approx(0.8)
    other = {"probe": "gpu-matmul-bf16", "speed": 8.0}
    assert drift_record(start, other)["end_over_start"] is None
    assert drift_record(start, {"reason": "timeout"})["end_over_start"] is None
