#!/usr/bin/env python
"""How often `loadbench compare` raises a false alarm, and how often it catches a real slowdown.

Simulation: runs shaped like the default matrix (24 cells; prefill, train, decode and load timings with
their samples), each metric's samples drawn from a lognormal whose relative IQR is the noise level of the
row. Per row it counts, over many independent pairs of runs:
  - false alarms: two runs of the same configuration, compare exits 1;
  - one cell 20 % slower: one random metric of one random cell 20 % slower, compare flags that metric;
  - whole run 33 % slower: every timed metric 33 % slower, compare exits 1.
With --run DIR the noise and sample counts are those each metric had in that real run.

Real runs: `--real RUN RUN [RUN ...]` (two or more real runs of one configuration), for every pair: the
A/A comparison (expected exit 0; how many timed metrics it calls changed), NEW 33 % slower in every timed
metric (samples scaled; expected exit 1), and each (cell, timed metric) of NEW 20 % slower on its own
(how many of those compare flags). `slowed_copy` writes such a copy to disk (tests use it).

    python scripts/compare_power.py                              # the simulation table
    python scripts/compare_power.py --real runs/A runs/B runs/C  # plus the real-run rows
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench.analysis.compare import RunData, compare_runs
from bench.analysis.compare.judging import gc_paused
from bench.schema import METRICS

TIMED = {  # metric -> typical median on the CPU default run (only the ratio between runs matters)
    "load.model_s": 0.2,
    "prefill.latency_s": 0.002,
    "prefill.tokens_per_s": 60_000.0,
    "train.step_s": 0.02,
    "train.tokens_per_s": 6_000.0,
    "decode.ttft_s": 0.003,
    "decode.tpot_s": 0.003,
    "decode.tokens_per_s": 600.0,
}
CELLS = 24


def _factor(metric: str, slower: float) -> float:
    """What `slower` (1.33: 33 % slower) does to a metric: times grow, rates shrink."""
    return 1.0 / slower if METRICS[metric].unit == "tokens/s" else slower


def _put(record: dict[str, Any], name: str, samples: np.ndarray) -> None:
    p10, q1, median, q3, p90 = np.quantile(samples, [0.1, 0.25, 0.5, 0.75, 0.9])
    record.update(
        {
            name: float(median),
            f"{name}.p10": float(p10),
            f"{name}.p90": float(p90),
            f"{name}.iqr": float(q3 - q1),
            f"{name}.n": int(samples.size),
            f"{name}.samples": samples.tolist(),
        }
    )


def _run(shape: list[dict[str, tuple[int, float]]], rng: np.random.Generator, slow: Mapping[tuple[int, str], float]
         ) -> RunData:  # fmt: skip
    """One simulated run: shape[cell][metric] = (n, relative IQR); slow[(cell, metric)] = slowdown."""
    records = []
    for i, metrics in enumerate(shape):
        record: dict[str, Any] = {"cell_id": f"cell{i:03d}", "status": "ok", "label": f"cell {i}"}
        for name, (n, rel_iqr) in metrics.items():
            sigma = rel_iqr / 1.349  # lognormal: IQR / median = 2 sinh(0.6745 sigma) ~ 1.349 sigma
            factor = _factor(name, slow.get((i, name), 1.0))
            _put(record, name, TIMED.get(name, 1.0) * factor * rng.lognormal(0.0, sigma, n))
        records.append(record)
    return RunData.from_records({"spec": {"model": "simulated"}, "schema_version": 1}, records)


def simulate(shape: list[dict[str, tuple[int, float]]], trials: int, seed: int) -> tuple[float, float, float]:
    """(false-alarm rate, one-cell 20 % detection rate, whole-run 33 % detection rate)."""
    rng = np.random.default_rng(seed)
    alarms = caught_one = caught_all = 0
    every = {(i, name): 1.33 for i, metrics in enumerate(shape) for name in metrics}
    with gc_paused():
        for _ in range(trials):
            base = _run(shape, rng, {})
            alarms += compare_runs(base, _run(shape, rng, {})).exit_code
            cell = int(rng.integers(len(shape)))
            metric = str(rng.choice(sorted(shape[cell])))
            one = compare_runs(base, _run(shape, rng, {(cell, metric): 1.20}))
            caught_one += any(r.metric == metric and r.cell == f"cell {cell}" for r in one.of("regression"))
            caught_all += compare_runs(base, _run(shape, rng, every)).exit_code
    return alarms / trials, caught_one / trials, caught_all / trials


def shape_of_run(directory: str) -> list[dict[str, tuple[int, float]]]:
    """Each ok cell's timed metrics with the sample count and relative IQR they had in a real run."""
    shape = []
    for record in RunData.load(directory).records.values():
        if record.get("status") != "ok":
            continue
        metrics = {}
        for key, samples in record.items():
            name = key.removesuffix(".samples")
            if (
                key.endswith(".samples")
                and name in METRICS
                and isinstance(samples, list)
                and len(samples) > 1
            ):
                values = np.array([s for s in samples if isinstance(s, (int, float))], dtype=float)
                q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])
                metrics[name] = (values.size, float((q3 - q1) / median) if median > 0 else 0.0)
        shape.append(metrics)
    return shape


def slow_record(record: dict[str, Any], slower: float, metrics: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of one record with its timed metrics (or only `metrics`) `slower` times slower: the median,
    its spread columns and every sample."""
    out = dict(record)
    chosen = set(metrics)
    suffixes = ("", ".p10", ".p90", ".iqr", ".ci_low", ".ci_high")
    for name, entry in METRICS.items():
        if entry.unit not in ("s", "tokens/s") or (chosen and name not in chosen):
            continue
        factor = _factor(name, slower)
        for key in (name + suffix for suffix in suffixes):
            if isinstance(out.get(key), (int, float)) and not isinstance(out.get(key), bool):
                out[key] = out[key] * factor
        if isinstance(out.get(f"{name}.samples"), list):
            out[f"{name}.samples"] = [
                s * factor if isinstance(s, (int, float)) else s for s in out[f"{name}.samples"]
            ]
    return out


def slowed_copy(
    source: str | Path, target: str | Path, slower: float, only: Iterable[tuple[str, str]] = ()
) -> Path:
    """A copy of a run directory with timed metrics `slower` times slower (samples and their statistics).

    only: (cell_id, metric) pairs to slow; empty slows every timed metric of every cell.
    """
    source, target = Path(source), Path(target)
    shutil.copytree(
        source, target, ignore=shutil.ignore_patterns("*.lock", "claims", "report.*", "records.*")
    )
    chosen: dict[str, set[str]] = {}
    for cell_id, metric in only:
        chosen.setdefault(cell_id, set()).add(metric)
    with (source / "records.jsonl").open() as src, (target / "records.jsonl").open("w") as dst:
        for line in src:
            record = json.loads(line)
            if not chosen:
                record = slow_record(record, slower)
            elif record.get("cell_id") in chosen:
                record = slow_record(record, slower, chosen[record["cell_id"]])
            dst.write(json.dumps(record) + "\n")
    return target


def real_pair(base: RunData, new: RunData) -> dict[str, Any]:
    """One pair of real runs of the same configuration: the A/A verdicts, NEW 33 % slower everywhere, and
    each (cell, timed metric) of NEW 20 % slower on its own (is that very metric flagged?)."""
    a_a = compare_runs(base, new)
    timed = [r for r in a_a.results if r.p is not None]
    slow = RunData.from_records(new.meta, [slow_record(r, 1.33) for r in new.records.values()])
    caught = 0
    for r in timed:
        records = dict(new.records)
        records[r.new_cell_id] = slow_record(records[r.new_cell_id], 1.20, [r.metric])
        one = compare_runs(base, RunData.from_records(new.meta, records.values()))
        caught += any(  # what the gate reads: the normalised column when the drift confounds
            x.new_cell_id == r.new_cell_id and x.metric == r.metric for x in one.gate_regressions
        )
    memory = [abs(r.change) for r in a_a.results if r.kind == "single value" and r.change is not None]
    return {
        "memory_max_change": max(memory, default=0.0),
        "memory_over_2pct": sum(c > 0.02 for c in memory),
        "memory": len(memory),
        "a_a_exit": a_a.exit_code,
        "false_verdicts": sum(r.verdict in ("regression", "improvement") for r in timed),
        "tested": len(timed),
        "whole_33_exit": compare_runs(base, slow).exit_code,
        "one_20_caught": caught,
        "drift": a_a.drift.ratio if a_a.drift is not None else None,
    }


def real_table(directories: list[str]) -> list[str]:
    """Markdown rows: every pair of the given real runs (all of one configuration)."""
    runs = [RunData.load(d) for d in directories]
    rows = [
        "| BASE → NEW | machine-speed ratio | A/A exit | timed metrics called changed (A/A) | "
        "whole run 33 % slower: exit | one metric of one cell 20 % slower: caught | memory peaks (A/A) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, j in itertools.combinations(range(len(runs)), 2):
        r = real_pair(runs[i], runs[j])
        drift = "not measured" if r["drift"] is None else f"{r['drift']:.3f}"
        rows.append(
            f"| {Path(directories[i]).name} → {Path(directories[j]).name} | {drift} | {r['a_a_exit']} | "
            f"{r['false_verdicts']} of {r['tested']} ({r['false_verdicts'] / max(1, r['tested']):.1%}) | "
            f"{r['whole_33_exit']} | {r['one_20_caught']} of {r['tested']} "
            f"({r['one_20_caught'] / max(1, r['tested']):.0%}) | {r['memory_over_2pct']} of {r['memory']} "
            f"differ > 2 % (max {r['memory_max_change']:.1%}) |"
        )
    return rows


def _summary(c: Any) -> str:
    counts = c.counts()
    ratio = c.drift.ratio if c.drift is not None else None
    drift = "not measured" if ratio is None else f"{ratio:.3f}"
    return (
        f"{counts['regressions']} regressions, {counts['improvements']} improvements of {c.tests} tested; "
        f"machine-speed ratio {drift}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=300, help="pairs of runs per row (default 300)")
    parser.add_argument(
        "--n", type=int, nargs="+", default=[5, 10, 20], help="samples per metric to simulate"
    )
    parser.add_argument("--iqr", type=float, nargs="+", default=[0.05, 0.10, 0.15], help="relative IQRs")
    parser.add_argument("--run", action="append", default=[], help="simulate with a real run's n and noise")
    parser.add_argument(
        "--real", nargs="+", default=[], metavar="RUN", help="two or more real runs of one configuration"
    )
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)

    print("| samples per metric | relative IQR | false alarms (A/A) | one metric 20 % slower caught | "
          "whole run 33 % slower caught | trials |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    for n in args.n:
        for rel_iqr in args.iqr:
            shape = [dict.fromkeys(TIMED, (n, rel_iqr)) for _ in range(CELLS)]
            fa, one, whole = simulate(shape, args.trials, args.seed)
            print(f"| {n} | {rel_iqr:.0%} | {fa:.1%} | {one:.1%} | {whole:.1%} | {args.trials} |")
    for directory in args.run:
        shape = shape_of_run(directory)
        ns = [n for metrics in shape for n, _ in metrics.values()]
        iqrs = [iqr for metrics in shape for _, iqr in metrics.values()]
        fa, one, whole = simulate(shape, args.trials, args.seed)
        print(
            f"| as in `{directory}` (n {min(ns)}-{max(ns)}, median {int(np.median(ns))}) | "
            f"median {np.median(iqrs):.0%}, max {max(iqrs):.0%} | {fa:.1%} | {one:.1%} | {whole:.1%} | {args.trials} |"
        )
    if len(args.real) == 1:
        parser.error("--real needs at least two run directories of the same configuration")
    if args.real:
        print()
        print("\n".join(real_table(args.real)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
