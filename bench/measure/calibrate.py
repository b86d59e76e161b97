"""The calibration probe: what this GPU actually sustains, measured once per run in a cell process.

MFU and MBU divide by these measured peaks (a bf16 matrix product and a device-to-device copy), not by
the datasheet, which is recorded beside them for reference.
"""

from __future__ import annotations

from typing import Any

from bench.measure.derived import datasheet_peak

MATMUL_N = 8192
COPY_BYTES = 1 << 30


def _cuda_time(fn: Any, reps: int, warmup: int = 3) -> float:
    """Median seconds per call, timed with CUDA events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    times.sort()
    return times[len(times) // 2]


def _matmul_seconds() -> float:
    import torch

    a = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16)
    return _cuda_time(lambda: a @ b, reps=10)


def _copy_seconds() -> float:
    import torch

    src = torch.empty(COPY_BYTES, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    return _cuda_time(lambda: dst.copy_(src), reps=10)


def calibrate() -> dict[str, Any]:
    """bf16 matmul TFLOP/s and copy bandwidth (GB/s, bytes read + written) on the current GPU."""
    import torch

    if not torch.cuda.is_available():
        return {"reason": "the calibration probe needs a CUDA GPU; MFU and MBU are GPU-only metrics"}
    name = torch.cuda.get_device_name()
    matmul_s = _matmul_seconds()
    copy_s = _copy_seconds()
    torch.cuda.empty_cache()
    sheet = datasheet_peak(name)
    return {
        "gpu": name,
        "matmul_bf16_tflops": 2 * MATMUL_N**3 / matmul_s / 1e12,
        "copy_bandwidth_gbps": 2 * COPY_BYTES / copy_s / 1e9,
        "datasheet_bf16_tflops": sheet[0] if sheet else None,
        "datasheet_bandwidth_tbps": sheet[1] if sheet else None,
        "method": f"median of 10 CUDA-event-timed {MATMUL_N}^3 bf16 matmuls and 1 GiB device copies, after 3 warm-ups",
    }


# -- machine drift --------------------------------------------------------------------------------

# fp32, one thread: ~0.9 GFLOP per call, ~15 ms on a current core: long enough that one sample spans several
# scheduler slices, so on a shared machine it measures the share of a core this process gets, not luck.
DRIFT_CPU_N = 768


def _cpu_drift() -> dict[str, Any]:
    import torch

    from bench.measure.probes import Budget, measure

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(DRIFT_CPU_N, DRIFT_CPU_N, generator=gen)
    b = torch.randn(DRIFT_CPU_N, DRIFT_CPU_N, generator=gen)
    flops = 2 * DRIFT_CPU_N**3
    stats = measure(
        lambda: torch.mm(a, b), Budget(min_n=10, max_n=300, seconds=0.5, min_seconds=0.3, warmup=2)
    )
    return {
        "probe": "cpu-matmul-fp32-1t",
        "speed": flops / stats.median / 1e9,
        "unit": "GFLOP/s",
        "samples": [flops / s / 1e9 for s in stats.samples],
        "stop": stats.stop,
        "method": f"median of timed {DRIFT_CPU_N}^3 float32 torch.mm on 1 thread, after 2 warm-ups, "
        "under loadbench's stop rule (bench.measure.probes)",
    }


def _gpu_drift() -> dict[str, Any]:
    import torch

    medians = [_matmul_seconds() for _ in range(5)]
    torch.cuda.empty_cache()
    speeds = [2 * MATMUL_N**3 / s / 1e12 for s in medians]
    return {
        "probe": "gpu-matmul-bf16",
        "speed": sorted(speeds)[len(speeds) // 2],
        "unit": "TFLOP/s",
        "samples": speeds,
        "gpu": torch.cuda.get_device_name(),
        "method": f"median of 5 calibration runs (each the median of 10 CUDA-event-timed {MATMUL_N}^3 bf16 "
        "matmuls after 3 warm-ups)",
    }


def drift_probe() -> dict[str, Any]:
    """A fixed calibration probe, measured at a run's start and end (run.json["drift"]): how fast this
    machine is right now, so two runs (or the two ends of one) can be told apart from a code change."""
    import datetime as dt

    import torch

    at = dt.datetime.now(dt.timezone.utc).isoformat()
    try:
        result = _gpu_drift() if torch.cuda.is_available() else _cpu_drift()
    except Exception as exc:  # a probe that fails leaves a reason, never a number
        return {"reason": f"the drift probe failed: {type(exc).__name__}: {exc}", "at": at}
    return {**result, "at": at}
