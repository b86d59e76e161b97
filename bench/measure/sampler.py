"""NVML sampling from the parent process: GPU memory per phase, energy, clocks and throttle reasons.

The sampler is a thread of the runner process, so it never shares a GIL (or a CUDA context) with the
measured code in the cell's process. Phase markers arrive from the worker over its pipe; each phase
keeps its own peak. Per-process memory is read by the worker's pid; where NVML cannot see that pid
(containers with their own PID namespace), the peak of device memory above the baseline taken before
the cell started is used instead, and the record says which source it is.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import Any

INTERVAL_S = 0.01
MIN_ENERGY_WINDOW_S = 1.0


def import_nvml() -> Any | None:
    """pynvml (nvidia-ml-py), initialised; None when there is no driver or GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError: no NVML here
        return None
    return pynvml


def handle_for(nvml: Any, lane: str) -> Any:
    """The NVML handle of a lane's device (its CUDA_VISIBLE_DEVICES value: a UUID or an index)."""
    if lane.startswith(("GPU-", "MIG-")):
        return nvml.nvmlDeviceGetHandleByUUID(lane)
    return nvml.nvmlDeviceGetHandleByIndex(int(lane))


def _try(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except Exception:  # NVMLError_NotSupported and friends: the field is unknown on this device
        return None


def gpu_state(nvml: Any, handle: Any) -> dict[str, Any]:
    """Clocks, throttle reasons, temperature and power now: recorded before and after a run."""
    reasons_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )
    reasons = _try(reasons_fn, handle) if reasons_fn else None
    power = _try(nvml.nvmlDeviceGetPowerUsage, handle)
    return {
        "sm_clock_mhz": _try(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM),
        "mem_clock_mhz": _try(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_MEM),
        "throttle_reasons": reasons,
        "throttle_reasons_text": describe_throttle(nvml, reasons),
        "temperature_c": _try(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
        "power_w": power / 1000 if power is not None else None,
        "time": time.time(),
    }


def describe_throttle(nvml: Any, mask: int | None) -> str | None:
    if mask is None:
        return None
    names = [
        n
        for n in dir(nvml)
        if n.startswith("nvmlClocksThrottleReason") and n != "nvmlClocksThrottleReasonAll"
    ]
    hits = sorted({n.removeprefix("nvmlClocksThrottleReason") for n in names if mask & getattr(nvml, n, 0)})
    hits = [h for h in hits if h != "None"]
    return ",".join(hits) if hits else "none"


@dataclass
class _Sample:
    t: float
    device_used: int
    process_used: int | None
    energy_mj: int | None


@dataclass
class _Cell:
    pid: int
    baseline: int
    phase: str = "starting"
    peaks: dict[str, dict[str, int]] = field(default_factory=dict)
    process_seen: bool = False
    energy: list[tuple[float, int]] = field(default_factory=list)


class NvmlSampler:
    """Samples one device every `interval` seconds while a cell runs on it."""

    def __init__(self, nvml: Any, handle: Any, interval: float = INTERVAL_S) -> None:
        self.nvml = nvml
        self.handle = handle
        self.interval = interval
        self._cell: _Cell | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loadbench-nvml", daemon=True)
        self.samples_taken = 0

    def start(self) -> NvmlSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # -- sampling ----------------------------------------------------------------------------------
    def _read(self, pid: int | None) -> _Sample:
        used = int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        process_used = None
        if pid is not None:
            procs = _try(self.nvml.nvmlDeviceGetComputeRunningProcesses, self.handle) or []
            for proc in procs:
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    process_used = int(proc.usedGpuMemory)
        energy = _try(self.nvml.nvmlDeviceGetTotalEnergyConsumption, self.handle)
        return _Sample(time.monotonic(), used, process_used, energy)

    def sample_once(self) -> None:
        with self._lock:
            cell = self._cell
            if cell is None:
                return
            s = self._read(cell.pid)
            peaks = cell.peaks.setdefault(cell.phase, {"device": 0, "process": 0})
            peaks["device"] = max(peaks["device"], s.device_used)
            if s.process_used is not None:
                cell.process_seen = True
                peaks["process"] = max(peaks["process"], s.process_used)
            if s.energy_mj is not None:
                cell.energy.append((s.t, s.energy_mj))
            self.samples_taken += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_once()

    # -- cells -------------------------------------------------------------------------------------
    def begin_cell(self, pid: int) -> None:
        baseline = self._read(None).device_used
        with self._lock:
            self._cell = _Cell(pid, baseline)

    def phase(self, name: str) -> None:
        self.sample_once()  # close the previous phase with a fresh sample
        with self._lock:
            if self._cell is not None:
                self._cell.phase = name

    def end_cell(self, windows: list[dict[str, Any]]) -> dict[str, Any]:
        """Record columns for the cell that just ended: per-phase NVML peaks and energy per token."""
        self.sample_once()
        with self._lock:
            cell, self._cell = self._cell, None
        if cell is None:
            return {}
        source = "process" if cell.process_seen else "device-delta"
        out: dict[str, Any] = {"mem.nvml_source": source, "mem.nvml_baseline_bytes": cell.baseline}
        for phase, peaks in cell.peaks.items():
            out[f"mem.{phase}.nvml_device_bytes"] = peaks["device"]
            if cell.process_seen:
                out[f"mem.{phase}.nvml_process_bytes"] = peaks["process"]
            else:
                out[f"mem.{phase}.nvml_process_bytes"] = max(0, peaks["device"] - cell.baseline)
        for window in windows:
            out.update(energy_columns(cell.energy, window))
        return out


def _energy_at(series: list[tuple[float, int]], t: float) -> float | None:
    """The energy counter at time t, interpolated between the samples around it."""
    times = [s[0] for s in series]
    i = bisect.bisect_left(times, t)
    if i < len(series) and times[i] == t:  # on a sample (the first one included): no interpolation
        return float(series[i][1])
    if i == 0 or i >= len(series):
        return None
    (t0, e0), (t1, e1) = series[i - 1], series[i]
    return e0 + (e1 - e0) * (t - t0) / (t1 - t0) if t1 > t0 else float(e0)


def energy_columns(series: list[tuple[float, int]], window: dict[str, Any]) -> dict[str, Any]:
    """energy.<phase>.j_per_token for one measured window (start, end, tokens); null with reason if short."""
    key = f"energy.{window['phase']}.j_per_token"
    duration = window["end"] - window["start"]
    if duration < MIN_ENERGY_WINDOW_S:
        return {
            key: None,
            f"{key}.reason": f"the measured window was {duration:.2f} s; energy needs at least 1 s",
        }
    if not series:
        return {key: None, f"{key}.reason": "this GPU does not report its energy counter through NVML"}
    start, end = _energy_at(series, window["start"]), _energy_at(series, window["end"])
    if start is None or end is None:
        return {key: None, f"{key}.reason": "no energy samples around the measured window"}
    joules = (end - start) / 1000.0
    return {key: joules / window["tokens"], f"energy.{window['phase']}.joules": joules}
