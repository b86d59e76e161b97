"""bench.measure.sampler against a scripted fake NVML, plus the real nvidia-ml-py path where a GPU exists."""

from __future__ import annotations

import os
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.measure import sampler as sampler_mod
from bench.measure.sampler import (
    NvmlSampler,
    describe_throttle,
    energy_columns,
    gpu_state,
    handle_for,
    import_nvml,
)

WORKER_PID = 4242
HANDLE = object()


class FakeNvmlError(Exception):
    """Stands in for pynvml.NVMLError_NotSupported and friends."""


@dataclass
class FakeProc:
    pid: int
    usedGpuMemory: int | None  # pynvml's spelling


@dataclass
class FakeNvml:
    """The pynvml names the sampler uses; every value is set by the test (a scripted timeline)."""

    NVML_CLOCK_SM = 0
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0
    nvmlClocksThrottleReasonNone = 0
    nvmlClocksThrottleReasonGpuIdle = 1
    nvmlClocksThrottleReasonApplicationsClocksSetting = 2
    nvmlClocksThrottleReasonSwPowerCap = 4
    nvmlClocksThrottleReasonHwSlowdown = 8
    nvmlClocksThrottleReasonSwThermalSlowdown = 32
    nvmlClocksThrottleReasonAll = 0xFF

    used: int = 0
    procs: list[FakeProc] | None = field(default_factory=list)  # None: the call is not supported
    energy_mj: int | None = 0  # None: the counter is not supported
    sm_clock: int = 1980
    mem_clock: int = 2619
    temperature: int | None = 41
    power_mw: int = 123_456
    reasons: int | None = 0
    memory_calls: int = 0
    handles_seen: list[Any] = field(default_factory=list)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        self.memory_calls += 1
        self.handles_seen.append(handle)
        return types.SimpleNamespace(used=self.used, free=80 * 2**30 - self.used, total=80 * 2**30)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[FakeProc]:
        if self.procs is None:
            raise FakeNvmlError("Not Supported")
        return list(self.procs)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        if self.energy_mj is None:
            raise FakeNvmlError("Not Supported")
        return self.energy_mj

    def nvmlDeviceGetClockInfo(self, handle: Any, kind: int) -> int:
        return {self.NVML_CLOCK_SM: self.sm_clock, self.NVML_CLOCK_MEM: self.mem_clock}[kind]

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        if self.temperature is None:
            raise FakeNvmlError("Not Supported")
        return self.temperature

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self.power_mw

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        if self.reasons is None:
            raise FakeNvmlError("Not Supported")
        return self.reasons


class FakeClock:
    """Replaces bench.measure.sampler's `time` module: the test moves monotonic time by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(sampler_mod, "time", fake)
    return fake


def _sample(sampler: NvmlSampler, nvml: FakeNvml, used: int, process: int | None = None) -> None:
    nvml.used = used
    if process is not None:
        nvml.procs = [FakeProc(1, 999_999), FakeProc(WORKER_PID, process)]
    sampler.sample_once()


# -- memory per phase ------------------------------------------------------------------------------


def test_each_phase_keeps_its_own_peak_from_the_worker_process() -> None:
    nvml = FakeNvml(used=1_000, procs=[FakeProc(1, 999_999)])  # another tenant's process, not ours
    s = NvmlSampler(nvml, HANDLE)
    s.begin_cell(WORKER_PID)
    s.phase("load")
    for used, proc in [(2_000, 1_000), (6_000, 5_000), (5_000, 4_000)]:
        _sample(s, nvml, used, proc)
    s.phase("prefill")  # closes load with a sample of the state at the switch (5_000 / 4_000)
    for used, proc in [(7_000, 6_000), (9_500, 8_500), (3_000, 2_000)]:  # rises, then drops
        _sample(s, nvml, used, proc)
    s.phase("decode")
    for used, proc in [(3_500, 2_500), (3_200, 2_200)]:
        _sample(s, nvml, used, proc)
    out = s.end_cell([])

    assert nvml.handles_seen and all(h is HANDLE for h in nvml.handles_seen)
    assert out["mem.nvml_source"] == "process"
    assert out["mem.nvml_baseline_bytes"] == 1_000
    assert out["mem.load.nvml_device_bytes"] == 6_000
    assert out["mem.load.nvml_process_bytes"] == 5_000
    assert out["mem.prefill.nvml_device_bytes"] == 9_500
    assert out["mem.prefill.nvml_process_bytes"] == 8_500
    # decode's peak is its own: not prefill's 9_500, nor the 3_000 that closed prefill
    assert out["mem.decode.nvml_device_bytes"] == 3_500
    assert out["mem.decode.nvml_process_bytes"] == 2_500
    # the other tenant's 999_999 never leaks into our process column
    assert all(v < 999_999 for k, v in out.items() if k.endswith("nvml_process_bytes"))


def test_device_delta_fallback_when_the_worker_pid_is_invisible() -> None:
    # a container with its own PID namespace: NVML lists host pids, never the worker's
    nvml = FakeNvml(used=1_000, procs=[FakeProc(77, 123), FakeProc(88, 456)])
    s = NvmlSampler(nvml, HANDLE)
    s.begin_cell(WORKER_PID)  # baseline: 1_000
    s.phase("load")
    for used in (1_500, 4_000, 3_000):
        _sample(s, nvml, used)
    s.phase("prefill")
    for used in (7_000, 2_000):
        _sample(s, nvml, used)
    out = s.end_cell([])

    assert out["mem.nvml_source"] == "device-delta"
    assert out["mem.nvml_baseline_bytes"] == 1_000
    assert out["mem.load.nvml_device_bytes"] == 4_000
    assert out["mem.load.nvml_process_bytes"] == 4_000 - 1_000
    assert out["mem.prefill.nvml_device_bytes"] == 7_000
    assert out["mem.prefill.nvml_process_bytes"] == 7_000 - 1_000


def test_device_delta_never_goes_negative() -> None:
    nvml = FakeNvml(used=5_000)
    s = NvmlSampler(nvml, HANDLE)
    s.begin_cell(WORKER_PID)
    s.phase("load")
    _sample(s, nvml, 4_000)  # another process freed memory meanwhile
    out = s.end_cell([])
    assert out["mem.nvml_source"] == "device-delta"
    assert out["mem.starting.nvml_device_bytes"] == 5_000  # phase("load") closed "starting"
    assert out["mem.load.nvml_device_bytes"] == 4_000
    assert out["mem.load.nvml_process_bytes"] == 0


@pytest.mark.parametrize(
    "procs",
    [
        None,  # nvmlDeviceGetComputeRunningProcesses not supported
        [FakeProc(WORKER_PID, None)],  # listed, but usedGpuMemory is NVML_VALUE_NOT_AVAILABLE
    ],
    ids=["call-unsupported", "memory-not-available"],
)
def test_unreadable_process_memory_falls_back_to_device_delta(procs: list[FakeProc] | None) -> None:
    nvml = FakeNvml(used=2_000, procs=procs)
    s = NvmlSampler(nvml, HANDLE)
    s.begin_cell(WORKER_PID)
    s.phase("train")
    nvml.used = 10_000
    s.sample_once()
    out = s.end_cell([])
    assert out["mem.nvml_source"] == "device-delta"
    assert out["mem.train.nvml_process_bytes"] == 8_000


def test_no_cell_no_samples_and_end_without_begin_is_empty() -> None:
    nvml = FakeNvml(used=1)
    s = NvmlSampler(nvml, HANDLE)
    s.sample_once()
    s.phase("load")
    assert s.samples_taken == 0
    assert nvml.memory_calls == 0
    assert s.end_cell([]) == {}


def test_a_new_cell_starts_from_scratch() -> None:
    nvml = FakeNvml(used=1_000, procs=[FakeProc(WORKER_PID, 9_000)])
    s = NvmlSampler(nvml, HANDLE)
    s.begin_cell(WORKER_PID)
    s.phase("load")
    _sample(s, nvml, 50_000, 9_000)
    first = s.end_cell([])
    assert first["mem.load.nvml_device_bytes"] == 50_000

    nvml.used, nvml.procs = 2_000, []
    s.begin_cell(WORKER_PID + 1)
    s.phase("load")
    _sample(s, nvml, 3_000)
    second = s.end_cell([])
    assert second["mem.nvml_source"] == "device-delta"  # the previous cell's process_seen is gone
    assert second["mem.nvml_baseline_bytes"] == 2_000
    assert second["mem.load.nvml_device_bytes"] == 3_000


# -- energy ----------------------------------------------------------------------------------------


def test_energy_per_token_from_counter_deltas_through_the_sampler(clock: FakeClock) -> None:
    # a constant 300 W draw: the counter rises 300_000 mJ per second; samples every 0.25 s
    nvml = FakeNvml(used=1, energy_mj=5_000_000)
    s = NvmlSampler(nvml, HANDLE)
    s.begin_cell(WORKER_PID)
    s.phase("prefill")
    t0 = clock.now
    for _ in range(16):
        clock.now += 0.25
        nvml.energy_mj += 75_000
        s.sample_once()
    # a window between samples, 2.1 s long, of 700 tokens: 300 W x 2.1 s = 630 J -> 0.9 J/token
    window = {"phase": "prefill", "start": t0 + 0.6, "end": t0 + 2.7, "tokens": 700}
    out = s.end_cell([window])
    assert out["energy.prefill.joules"] == pytest.approx(630.0)
    assert out["energy.prefill.j_per_token"] == pytest.approx(0.9)
    assert "energy.prefill.j_per_token.reason" not in out


def test_energy_interpolates_linearly_between_the_samples_around_the_window() -> None:
    # uneven draw (1 W, then 4 W): reading the sample before (5.0 J) or after (8.0 J) each end is wrong
    series = [(10.0, 0), (11.0, 1_000), (12.0, 5_000), (13.0, 9_000)]
    out = energy_columns(series, {"phase": "decode", "start": 10.5, "end": 12.5, "tokens": 10})
    # start: halfway 0 -> 1_000 = 500 mJ; end: halfway 5_000 -> 9_000 = 7_000 mJ; 6_500 mJ = 6.5 J
    assert out["energy.decode.joules"] == pytest.approx(6.5)
    assert out["energy.decode.j_per_token"] == pytest.approx(0.65)

    # a quarter of the way along each interval: 250 mJ and 6_000 mJ
    out = energy_columns(series, {"phase": "decode", "start": 10.25, "end": 12.25, "tokens": 5})
    assert out["energy.decode.joules"] == pytest.approx(5.75)
    assert out["energy.decode.j_per_token"] == pytest.approx(1.15)


def test_energy_window_on_the_first_and_last_sample() -> None:
    series = [(10.0, 2_000), (11.0, 3_000), (12.0, 6_000)]
    out = energy_columns(series, {"phase": "train", "start": 10.0, "end": 12.0, "tokens": 8})
    assert out["energy.train.joules"] == pytest.approx(4.0)
    assert out["energy.train.j_per_token"] == pytest.approx(0.5)


@pytest.mark.parametrize("duration", [0.0, 0.5, 0.99])
def test_energy_window_shorter_than_a_second_is_null_with_its_duration(duration: float) -> None:
    series = [(float(t), 1_000 * t) for t in range(10)]
    out = energy_columns(series, {"phase": "prefill", "start": 2.0, "end": 2.0 + duration, "tokens": 5})
    assert out["energy.prefill.j_per_token"] is None
    reason = out["energy.prefill.j_per_token.reason"]
    assert f"{duration:.2f} s" in reason
    assert "1 s" in reason
    assert "energy.prefill.joules" not in out


def test_energy_without_counter_samples_is_null_with_reason(clock: FakeClock) -> None:
    nvml = FakeNvml(used=1, energy_mj=None)  # the counter is not supported on this GPU
    s = NvmlSampler(nvml, HANDLE)
    s.begin_cell(WORKER_PID)
    s.phase("train")
    for _ in range(5):
        clock.now += 1.0
        s.sample_once()
    out = s.end_cell([{"phase": "train", "start": clock.now - 4, "end": clock.now - 1, "tokens": 10}])
    assert out["energy.train.j_per_token"] is None
    assert "energy counter" in out["energy.train.j_per_token.reason"]
    assert out["mem.train.nvml_device_bytes"] == 1  # memory is still sampled


def test_energy_window_outside_the_samples_is_null_with_reason() -> None:
    series = [(10.0, 0), (11.0, 1_000), (12.0, 2_000)]
    for start, end in [(8.0, 11.0), (11.0, 14.0)]:
        out = energy_columns(series, {"phase": "decode", "start": start, "end": end, "tokens": 1})
        assert out["energy.decode.j_per_token"] is None
        assert "no energy samples around" in out["energy.decode.j_per_token.reason"]


def test_one_energy_column_set_per_window(clock: FakeClock) -> None:
    nvml = FakeNvml(used=1, energy_mj=0)
    s = NvmlSampler(nvml, HANDLE)
    s.begin_cell(WORKER_PID)
    s.phase("prefill")
    t0 = clock.now
    for _ in range(10):
        clock.now += 1.0
        nvml.energy_mj += 100_000  # 100 W
        s.sample_once()
    out = s.end_cell(
        [
            {"phase": "prefill", "start": t0 + 1, "end": t0 + 3, "tokens": 100},  # 200 J
            {"phase": "decode", "start": t0 + 4, "end": t0 + 4.5, "tokens": 100},  # too short
        ]
    )
    assert out["energy.prefill.j_per_token"] == pytest.approx(2.0)
    assert out["energy.decode.j_per_token"] is None
    assert "0.50 s" in out["energy.decode.j_per_token.reason"]


# -- the background thread -------------------------------------------------------------------------


def test_background_thread_samples_about_every_10_ms_and_stops() -> None:
    nvml = FakeNvml(used=3_000)
    s = NvmlSampler(nvml, HANDLE)
    assert s.interval == pytest.approx(0.01)
    s.begin_cell(os.getpid())
    s.start()
    time.sleep(0.3)
    s.stop()
    taken = s.samples_taken
    assert not s._thread.is_alive()
    # 0.3 s at 10 ms is at most ~30; well below means it stalled, above means it does not wait
    assert 10 <= taken <= 40, taken
    time.sleep(0.05)
    assert s.samples_taken == taken  # nothing samples after stop()
    out = s.end_cell([])
    assert out["mem.starting.nvml_device_bytes"] == 3_000


# -- GPU state -------------------------------------------------------------------------------------


def test_gpu_state_reads_clocks_power_and_decodes_reasons() -> None:
    nvml = FakeNvml(reasons=1 | 4, power_mw=312_500, temperature=67)
    state = gpu_state(nvml, HANDLE)
    assert state["sm_clock_mhz"] == 1980
    assert state["mem_clock_mhz"] == 2619
    assert state["temperature_c"] == 67
    assert state["power_w"] == pytest.approx(312.5)
    assert state["throttle_reasons"] == 5
    assert state["throttle_reasons_text"] == "GpuIdle,SwPowerCap"
    assert isinstance(state["time"], float)


def test_gpu_state_unsupported_fields_are_none() -> None:
    nvml = FakeNvml(reasons=None, temperature=None)
    state = gpu_state(nvml, HANDLE)
    assert state["throttle_reasons"] is None
    assert state["throttle_reasons_text"] is None
    assert state["temperature_c"] is None
    assert state["sm_clock_mhz"] == 1980


def test_gpu_state_falls_back_to_the_old_throttle_reasons_name() -> None:
    class OldNvml(FakeNvml):
        nvmlDeviceGetCurrentClocksEventReasons = None  # type: ignore[assignment]  # an old pynvml

        def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
            return 8

    state = gpu_state(OldNvml(), HANDLE)
    assert state["throttle_reasons"] == 8
    assert state["throttle_reasons_text"] == "HwSlowdown"


@pytest.mark.parametrize(
    ("mask", "text"),
    [
        (None, None),
        (0, "none"),
        (1, "GpuIdle"),
        (4, "SwPowerCap"),
        (1 | 4 | 32, "GpuIdle,SwPowerCap,SwThermalSlowdown"),
        (0x1000, "none"),  # a bit this pynvml has no name for
    ],
)
def test_describe_throttle_decodes_a_mask(mask: int | None, text: str | None) -> None:
    assert describe_throttle(FakeNvml(), mask) == text


def test_describe_throttle_with_the_real_pynvml_constants() -> None:
    pynvml = pytest.importorskip("pynvml")  # importing needs no driver
    assert describe_throttle(pynvml, 0x1 | 0x4) == "GpuIdle,SwPowerCap"
    assert describe_throttle(pynvml, 0x40) == "HwThermalSlowdown"
    assert describe_throttle(pynvml, 0) == "none"
    # "All" is a mask, not a reason
    assert "All" not in describe_throttle(pynvml, 0x7FF).split(",")


def test_handle_for_uuid_or_index() -> None:
    calls: list[tuple[str, Any]] = []
    nvml = types.SimpleNamespace(
        nvmlDeviceGetHandleByUUID=lambda u: calls.append(("uuid", u)) or "h-uuid",
        nvmlDeviceGetHandleByIndex=lambda i: calls.append(("index", i)) or "h-index",
    )
    assert handle_for(nvml, "GPU-1234abcd") == "h-uuid"
    assert handle_for(nvml, "MIG-5678") == "h-uuid"
    assert handle_for(nvml, "3") == "h-index"
    assert calls == [("uuid", "GPU-1234abcd"), ("uuid", "MIG-5678"), ("index", 3)]


# -- import_nvml and the real nvidia-ml-py ---------------------------------------------------------


def test_import_nvml_is_none_when_init_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=no_driver))
    assert import_nvml() is None


def test_import_nvml_returns_the_initialised_module(monkeypatch: pytest.MonkeyPatch) -> None:
    inits: list[bool] = []
    fake = types.SimpleNamespace(nvmlInit=lambda: inits.append(True))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert import_nvml() is fake
    assert inits == [True]


def test_real_nvml_samples_device_0() -> None:
    nvml = import_nvml()
    if nvml is None:
        pytest.skip("no NVIDIA driver/GPU on this host")
    try:
        handle = handle_for(nvml, "0")
        s = NvmlSampler(nvml, handle)
        s.begin_cell(os.getpid())
        s.phase("load")
        s.start()
        time.sleep(0.2)
        s.stop()
        out = s.end_cell([])
        state = gpu_state(nvml, handle)
    finally:
        nvml.nvmlShutdown()
    assert s.samples_taken > 0
    assert out["mem.load.nvml_device_bytes"] > 0  # the driver itself holds some device memory
    assert out["mem.nvml_baseline_bytes"] > 0
    assert out["mem.nvml_source"] in ("process", "device-delta")
    assert state["sm_clock_mhz"] is None or state["sm_clock_mhz"] > 0
