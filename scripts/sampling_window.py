#!/usr/bin/env python
"""How long must a timed metric be sampled for its median to hold across a shared machine's wander?

Times one fixed workload (the tiny-llama preset's no-grad prefill, batch 2 x seq 64, one thread) back to
back for --seconds, then cuts the series into windows of each length and prints how much the windows'
medians differ (standard deviation and range of their logs). A median taken over a short window is one
moment of the machine; the spread that remains at long windows is what no sampling inside one cell can
remove (compare's run-to-run spread covers it).

    python scripts/sampling_window.py --seconds 60
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def series(seconds: float, batch: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    """(start time, duration) of each prefill, back to back for `seconds`."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.plan.checkpoints import make_checkpoint

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(make_checkpoint("tiny-llama"), dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
    starts, durations = [], []
    with torch.no_grad():
        for _ in range(3):
            model(ids)
        t0 = time.perf_counter()
        while (now := time.perf_counter()) - t0 < seconds:
            model(ids)
            starts.append(now - t0)
            durations.append(time.perf_counter() - now)
    return np.array(starts), np.array(durations)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to sample (default 60)")
    parser.add_argument("--windows", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0, 2.0, 4.0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args(argv)
    starts, durations = series(args.seconds, args.batch, args.seq)
    print(f"{durations.size} prefills in {args.seconds:g} s, median {np.median(durations) * 1e3:.2f} ms\n")
    print("| window | windows | sd of log window medians | range (max/min - 1) |")
    print("|---:|---:|---:|---:|")
    for window in args.windows:
        edges = np.arange(0.0, args.seconds - window + 1e-9, window)
        medians = [np.median(durations[(starts >= e) & (starts < e + window)]) for e in edges]
        logs = np.log([m for m in medians if np.isfinite(m)])
        if logs.size < 3:
            continue
        print(f"| {window:g} s | {logs.size} | {logs.std(ddof=1):.1%} | {np.exp(np.ptp(logs)) - 1:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
