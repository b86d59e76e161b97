#!/usr/bin/env python
"""loadbench's 4-cell CPU sweep run by optimum-benchmark: the other side of the ratio in tests/perf.

    /path/to/ob-venv/bin/python scripts/optimum_benchmark_sweep.py CHECKPOINT [--samples default|matched]
        [--dtype float32,bfloat16] [--attn eager,sdpa] [--batch 2] [--seq 64] [--new-tokens 8]

CHECKPOINT is the directory of a loadbench run's model (run.json `checkpoint.path`). Runs, for each
dtype × attn cell, optimum-benchmark's `inference` scenario (load, prefill, decode: `generate` with
min = max new tokens) and its `training` scenario (Trainer steps), each through the `process` launcher (a
fresh spawned process per benchmark, as the optimum-benchmark CLI does), PyTorch backend on the CPU with one
thread. Prints one JSON object: the wall seconds of each benchmark, per scenario and in all, and what
optimum-benchmark's own latency trackers saw inside them (`tracked_s`).

`--samples default` keeps optimum-benchmark's defaults, i.e. what its user gets (inference: 10 warm-up
generates, then prefill and generate each for at least 10 s and 10 iterations; training: 140 steps, of which
40 warm-up). `--samples matched` asks for what loadbench takes by default (10 samples per metric, bench/schema.py
MIN_SAMPLES, after 2 warm-ups): inference 10 iterations with no minimum duration, training 12 steps.

The script runs in optimum-benchmark's interpreter, not loadbench's: it imports nothing from loadbench.
"""

from __future__ import annotations

import os

# One intra-op thread, as `loadbench run` (spec threads: 1). Set before torch is imported here, and inherited
# by the benchmark processes the `process` launcher spawns.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LOG_TO_FILE", "0")  # optimum-benchmark otherwise writes benchmark.log into the cwd
os.environ.setdefault("LOG_LEVEL", "WARNING")

import argparse
import json
import sys
import tempfile
import time
from typing import Any

T0 = time.perf_counter()


def _transformers_5_shims() -> None:
    """What optimum-benchmark 0.6.0 needs of transformers 4 that transformers 5 no longer has.

    `optimum_benchmark.backends.transformers_utils` imports `SpecialTokensMixin` (gone in transformers 5; its
    role is `PreTrainedTokenizerBase`'s) for a type annotation only, and every backend imports that module.
    Only the benchmark processes import it, and spawn runs this script (as `__mp_main__`) in each of them
    before the benchmark: the shim is applied there. It imports `transformers_utils` at once because a later
    import of transformers' submodules (the PyTorch backend imports Trainer, accelerate, datasets first)
    drops an attribute set on the lazy `transformers` module.
    """
    import transformers

    if not hasattr(transformers, "SpecialTokensMixin"):
        transformers.SpecialTokensMixin = transformers.PreTrainedTokenizerBase  # type: ignore[attr-defined]
    import optimum_benchmark.backends.transformers_utils  # noqa: F401


if __name__ == "__mp_main__":
    _transformers_5_shims()

SAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {"inference": {}, "training": {}},
    "matched": {
        "inference": {"iterations": 10, "duration": 0, "warmup_runs": 2},
        "training": {"max_steps": 12, "warmup_steps": 2},
    },
}
# What optimum-benchmark's latency trackers time, per scenario (the rest of a benchmark's wall is start-up,
# loading outside the trackers, input generation, untracked warm-ups and tear-down).
TRACKED = {"inference": ("load_model", "first_generate", "generate"), "training": ("overall",)}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--samples", choices=sorted(SAMPLES), default="default")
    p.add_argument("--dtype", default="float32,bfloat16")
    p.add_argument("--attn", default="eager,sdpa")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--scenarios", default="inference,training")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    from optimum_benchmark import (
        Benchmark,
        BenchmarkConfig,
        InferenceConfig,
        ProcessConfig,
        PyTorchConfig,
        TrainingConfig,
    )

    import_s = time.perf_counter() - T0
    samples = SAMPLES[args.samples]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ob-sweep-") as workdir:
        for dtype in args.dtype.split(","):
            for attn in args.attn.split(","):
                for scenario_name in args.scenarios.split(","):
                    start = time.perf_counter()
                    backend = PyTorchConfig(
                        model=args.checkpoint,
                        device="cpu",
                        task="text-generation",
                        library="transformers",
                        model_type="llama",
                        torch_dtype=dtype,
                        attn_implementation=attn,
                    )
                    scenario: Any
                    if scenario_name == "inference":
                        scenario = InferenceConfig(
                            input_shapes={"batch_size": args.batch, "sequence_length": args.seq},
                            generate_kwargs={
                                "max_new_tokens": args.new_tokens,
                                "min_new_tokens": args.new_tokens,
                            },
                            **samples["inference"],
                        )
                    elif scenario_name == "training":
                        scenario = TrainingConfig(
                            dataset_shapes={"dataset_size": 500, "sequence_length": args.seq},
                            training_arguments={
                                "per_device_train_batch_size": args.batch,
                                "output_dir": os.path.join(workdir, "trainer_output"),
                            },
                            **samples["training"],
                        )
                    else:
                        raise SystemExit(f"unknown scenario {scenario_name!r}")
                    config = BenchmarkConfig(
                        name=f"{dtype}-{attn}-{scenario_name}",
                        backend=backend,
                        scenario=scenario,
                        launcher=ProcessConfig(),
                    )
                    report = Benchmark.launch(config).to_dict()
                    wall_s = time.perf_counter() - start
                    tracked = {
                        target: report[target]["latency"]["total"]
                        for target in TRACKED[scenario_name]
                        if (report.get(target) or {}).get("latency")
                    }
                    runs.append(
                        {
                            "dtype": dtype,
                            "attn": attn,
                            "scenario": scenario_name,
                            "wall_s": wall_s,
                            "tracked_s": sum(tracked.values()),
                            "tracked": tracked,
                        }
                    )
    by_scenario = {
        name: sum(r["wall_s"] for r in runs if r["scenario"] == name) for name in args.scenarios.split(",")
    }
    result = {
        "tool": "optimum-benchmark",
        "samples": args.samples,
        "checkpoint": args.checkpoint,
        "shape": {"batch": args.batch, "seq": args.seq, "new_tokens": args.new_tokens},
        "import_s": import_s,
        "scenario_wall_s": by_scenario,
        "tracked_s": sum(r["tracked_s"] for r in runs),
        "wall_s": time.perf_counter() - T0,
        "runs": runs,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
