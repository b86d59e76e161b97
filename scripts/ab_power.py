#!/usr/bin/env python
"""What `loadbench ab` can trust on this machine, measured with real runs (README: "A regression gate in CI").

Runs the 4-cell CPU sweep (`--dtype float32,bfloat16 --quant none --attn eager,sdpa --grad-ckpt off`):
  - A/A: `loadbench ab` with the same interpreter on both sides, N times: how many runs exit 1 and how many
    judged metrics are called changed;
  - the stored-baseline gate beside it: N+1 plain `loadbench run`s, each compared with the one before
    (`loadbench compare`, N comparisons of the same cells);
  - detection: N ab runs whose new side is slowed through its environment only (tests/slowdown's
    sitecustomize on its PYTHONPATH): `compute=0.10` (every forward, backward, optimizer step and generate
    10 % slower) and `load=0.10` (from_pretrained 10 % slower);
  - cost: the median wall time of an ab run over that of a plain run.
Each run is a `loadbench` subprocess, one after another, as CI would run them. Prints the tables of
docs/statistics.md and writes every run directory and summary.json under --out. `--from DIR` prints them
again from a finished DIR, each stored ab run judged again by this loadbench, with the rounds table: each
judged on its first 6, 8, ... rounds (what a lower --rounds would have concluded, and about what it would
have cost).

    python scripts/ab_power.py --runs 10 --out runs/ab-power
    python scripts/ab_power.py --runs 2 --only aa,compare     # a quick look
    python scripts/ab_power.py --from runs/ab-power           # the tables again (and rejudged.json), rounds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["--dtype", "float32,bfloat16", "--quant", "none", "--attn", "eager,sdpa", "--grad-ckpt", "off"]
SLOWDOWNS = {"compute": "compute=0.10", "load": "load=0.10"}
# What each slowdown slows (tests/slowdown): compute spins after every outermost forward, backward, optimizer
# step and generate, so decode's total (tokens/s) slows but not its per-token times, measured inside generate.
DETECTED = {
    "compute": ("prefill.latency_s", "train.step_s", "decode.tokens_per_s"),
    "load": ("load.model_s",),
}
PARTS = ("aa", "compare", "compute", "load")


def loadbench(args: list[str]) -> tuple[int, float, str]:
    """One `loadbench` command: (exit code, wall seconds, stderr)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
    }
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench.cli", *args], env=env, capture_output=True, text=True, check=False
    )
    return done.returncode, time.perf_counter() - start, done.stderr


def ab(out: Path, seed: int, slowdown: str | None = None) -> dict[str, Any]:
    """One ab run of the sweep; its exit code, wall time and judged-metric counts."""
    extra = []
    if slowdown is not None:
        path = os.pathsep.join((str(ROOT / "tests" / "slowdown"), str(ROOT)))
        extra = ["--new-env", f"PYTHONPATH={path}", "--new-env", f"LOADBENCH_SLOWDOWN={slowdown}"]
    py = sys.executable
    code, wall, err = loadbench(
        [
            "ab",
            "--base",
            py,
            "--new",
            py,
            *SWEEP,
            *extra,
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--format",
            "json",
        ]
    )
    if code not in (0, 1):
        raise SystemExit(f"loadbench ab exited {code} for {out}:\n{err[-3000:]}")
    return {"exit": code, "wall_s": wall, **counts(json.loads((out / "ab.json").read_text()))}


def counts(doc: dict[str, Any]) -> dict[str, Any]:
    """What a row needs of one ab run's JSON verdicts (`loadbench ab --format json`)."""
    timed = [r for r in doc["results"] if r["kind"] == "timed" and r["verdict"] != "not judged"]
    return {
        "judged": len(timed),
        "changed": sum(r["verdict"] in ("regression", "improvement") for r in timed),
        "regressed": sorted({r["metric"] for r in timed if r["verdict"] == "regression"}),
        "ratios": {f"{r['cell_id']}:{r['metric']}": r["ratio"] for r in timed},
        "rounds": doc["rounds"],
        "memory_changed": sum(
            r["verdict"] in ("regression", "improvement") for r in doc["results"] if r["kind"] == "memory"
        ),
    }


def rejudge(run: Path, limit: int | None = None) -> dict[str, Any]:
    """One stored ab run judged again by this loadbench (on its first `limit` rounds, when given)."""
    from bench.analysis.ab import judge_run, render_json
    from bench.run.store import RunStore

    store = RunStore.open(run)
    judgement = judge_run(store, limit)
    doc = json.loads(render_json(judgement, store.meta))
    return {"exit": int(judgement.regressed), **counts(doc)}


def plain_runs(out: Path, count: int) -> list[dict[str, Any]]:
    """`count` plain runs of the sweep, then each compared with the one before."""
    runs = []
    for i in range(count):
        code, wall, err = loadbench(["run", *SWEEP, "--out", str(out / f"run-{i}"), "--no-live"])
        if code != 0:
            raise SystemExit(f"loadbench run exited {code}:\n{err[-3000:]}")
        runs.append({"wall_s": wall})
    for i in range(1, count):
        report = out / f"compare-{i}.json"
        code, _, _ = loadbench(
            [
                "compare",
                str(out / f"run-{i - 1}"),
                str(out / f"run-{i}"),
                "--format",
                "json",
                "--out",
                str(report),
            ]
        )
        doc = json.loads(report.read_text())
        timed = [r for r in doc["results"] if r["kind"] == "samples" and r["verdict"] != "not judged"]
        runs[i].update(
            exit=code,
            judged=len(timed),
            changed=sum(r["verdict"] in ("regression", "improvement") for r in timed),
        )
    return runs


def aa_row(name: str, runs: list[dict[str, Any]]) -> str:
    judged = sum(r["judged"] for r in runs)
    changed = sum(r["changed"] for r in runs)
    exits = sum(r["exit"] == 1 for r in runs)
    share = changed / judged if judged else float("nan")
    return f"| {name} | {len(runs)} | {exits} of {len(runs)} | {share:.1%} ({changed} of {judged}) |"


def detection_row(name: str, runs: list[dict[str, Any]], metrics: tuple[str, ...]) -> str:
    from bench.schema import METRICS

    caught = sum(r["exit"] == 1 for r in runs)
    # as a slowdown: time new/base, throughput base/new
    ratios = [
        v if METRICS[k.split(":")[1]].better == "lower" else 1 / v
        for r in runs
        for k, v in r["ratios"].items()
        if k.split(":")[1] in metrics
    ]
    flagged = sum(m in r["regressed"] for r in runs for m in metrics)
    return (
        f"| {name} | {len(runs)} | {caught} of {len(runs)} ({caught / len(runs):.0%}) | "
        f"{statistics.median(ratios):.3f} | {flagged} of {len(runs) * len(metrics)} metric-runs |"
    )


def rounds_table(out: Path, summary: dict[str, Any], rounds: tuple[int, ...] = (6, 8, 10)) -> list[str]:
    """Each stored ab run judged on its first R rounds: exits and A/A metrics called changed, and the wall
    time an A/A run would have taken (its measured wall less the rounds it would not have run)."""
    plain = statistics.median(r["wall_s"] for r in summary["compare"])
    lines = [
        "| rounds | A/A exit 1 | A/A metrics changed | compute caught | load caught | ab wall (A/A) | x plain |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = len(summary["aa"])
    for limit in rounds:
        rows = {
            name: [rejudge(out / f"{name}-{i}", limit) for i in range(runs)] for name in ("aa", *SLOWDOWNS)
        }
        saved = []
        for i in range(runs):
            with (out / f"aa-{i}" / "records.jsonl").open() as lines_in:
                sides = [r for r in map(json.loads, lines_in) if r.get("side")]
            end = max(r["started_at"] + r["cell.wall_s"] for r in sides)
            cut = max(r["started_at"] + r["cell.wall_s"] for r in sides if r["ab.round"] <= limit)
            saved.append(end - cut)
        wall = statistics.median(r["wall_s"] for r in summary["aa"]) - statistics.median(saved)
        aa = rows["aa"]
        caught = {name: sum(r["exit"] for r in rows[name]) for name in SLOWDOWNS}
        lines.append(
            f"| {limit} | {sum(r['exit'] for r in aa)} of {runs} | {sum(r['changed'] for r in aa)} of "
            f"{sum(r['judged'] for r in aa)} | {caught['compute']} of {runs} | {caught['load']} of {runs} | "
            f"{wall:.1f} s | {wall / plain:.2f}x |"
        )
    return lines


def print_tables(summary: dict[str, Any], out: Path) -> None:
    """The tables of docs/statistics.md from a summary (and, for the rounds table, its run directories)."""
    print(f"4-cell CPU sweep, {summary['runs']} runs per row, {summary['started'][:10]}\n")
    print("| gate | runs | exit 1 | timed metrics called changed |\n|---|---:|---:|---:|")
    if "aa" in summary:
        print(aa_row("`loadbench ab`, A/A (same interpreter on both sides)", summary["aa"]))
    if "compare" in summary:
        print(aa_row("`loadbench compare` of two plain runs (a stored baseline)", summary["compare"][1:]))
    rows = [(name, metrics) for name, metrics in DETECTED.items() if name in summary]
    if rows:
        print(
            "\n| new side slowed | runs | caught (exit 1) | median slowdown measured | flagged |\n|---|---:|---:|---:|---:|"
        )
        for name, metrics in rows:
            label = f"`LOADBENCH_SLOWDOWN={SLOWDOWNS[name]}` ({', '.join(metrics)})"
            print(detection_row(label, summary[name], metrics))
    if "aa" in summary and "compare" in summary:
        ab_wall = statistics.median(r["wall_s"] for r in summary["aa"])
        plain_wall = statistics.median(r["wall_s"] for r in summary["compare"])
        print(
            f"\ncost: an ab run {ab_wall:.1f} s, a plain run {plain_wall:.1f} s (medians): {ab_wall / plain_wall:.2f}x"
        )
        if all(name in summary for name in SLOWDOWNS):
            print("\n" + "\n".join(rounds_table(out, summary)))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=10, help="ab runs per row (and comparisons of plain runs)"
    )
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument(
        "--out", type=Path, default=Path("runs") / f"ab-power-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    parser.add_argument("--from", dest="source", type=Path, help="print the tables of a finished --out again")
    args = parser.parse_args()
    if args.source is not None:  # the stored runs judged again by this loadbench; wall times as measured
        summary = json.loads((args.source / "summary.json").read_text())
        for name in ("aa", *SLOWDOWNS):
            for i, row in enumerate(summary.get(name, [])):
                row.update(rejudge(args.source / f"{name}-{i}"))
        (args.source / "rejudged.json").write_text(json.dumps(summary, indent=1))
        print_tables(summary, args.source)
        return 0
    parts = args.only.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "runs": args.runs,
        "sweep": SWEEP,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if "aa" in parts:
        summary["aa"] = [ab(args.out / f"aa-{i}", seed=i + 1) for i in range(args.runs)]
    if "compare" in parts:
        summary["compare"] = plain_runs(args.out / "plain", args.runs + 1)
    for name, slowdown in SLOWDOWNS.items():
        if name in parts:
            summary[name] = [
                ab(args.out / f"{name}-{i}", seed=i + 101, slowdown=slowdown) for i in range(args.runs)
            ]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_tables(summary, args.out)
    print(f"\nrun directories and summary.json: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
