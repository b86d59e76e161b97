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
