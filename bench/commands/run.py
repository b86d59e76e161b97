"""`loadbench run`: run a matrix, then render its report.

The run stage (bench.run.session) ends with the run directory written; the report is rendered here,
after it returns, because the run stage never imports analysis.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.errors import SpecError
from bench.units import parse_size

SPEC_OVERRIDES = (
    "model",
    "dtype",
    "quant",
    "attn",
    "grad_ckpt",
    "use_cache",
    "workloads",
    "batch",
    "seq",
    "new_tokens",
    "threads",
)


def add_spec_args(p: argparse.ArgumentParser) -> None:
    """The matrix arguments `run` and `plan` share: a spec source and per-axis overrides."""
    p.add_argument("spec", nargs="?", help="matrix spec YAML (default: the 'default' preset)")
    p.add_argument("--preset", help="a matrix preset from bench/presets (default, gpu)")
    p.add_argument("--recipe", help="an open-r1 / TRL recipe YAML: one cell with its knobs and shape")
    p.add_argument("--model", help="architecture preset name or local checkpoint directory")
    p.add_argument("--dtype", help="comma list: auto,bfloat16,float16,float32")
    p.add_argument("--quant", help="comma list: none,nf4,fp4,nf4-dq,fp4-dq,8bit")
    p.add_argument("--attn", help="comma list: eager,sdpa,flash_attention_2,flash_attention_3,flex_attention")
    p.add_argument("--grad-ckpt", dest="grad_ckpt", help="comma list: off,on")
    p.add_argument(
        "--cache", dest="use_cache", help="comma list: auto,on,off (auto: off under checkpointing)"
    )
    p.add_argument("--workloads", help="comma list: prefill,train,decode")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--new-tokens", dest="new_tokens", type=int)
    p.add_argument("--threads", type=int, help="CPU threads per cell (default 1: stable timings)")


def load_spec(args: argparse.Namespace) -> Any:
    """The MatrixSpec the arguments name: one source (SPEC, --recipe or --preset), then the overrides."""
    from bench.plan.matrix import MatrixSpec, load_preset

    sources = [s for s in (args.spec, args.recipe, args.preset) if s]
    if len(sources) > 1:
        raise SpecError("give one of SPEC, --recipe or --preset, not several.")
    if args.recipe:
        spec = MatrixSpec.from_recipe(args.recipe)
    elif args.spec:
        spec = MatrixSpec.from_yaml(args.spec)
    else:
        spec = load_preset(args.preset or "default")
    return spec.with_overrides(**{k: getattr(args, k) for k in SPEC_OVERRIDES})


def register(sub: Any) -> None:
    """Add the `run` subcommand to the CLI's subparsers."""
    run = sub.add_parser("run", help="run a matrix (default: the embedded tiny model on this host)")
    add_spec_args(run)
    run.add_argument("--out", help="run directory (default: runs/<time>-<spec>)")
    run.add_argument("--resume", action="store_true", help="continue a run: skip cells with a final record")
    run.add_argument("--shard", help="I/N: run only this deterministic share of the cells")
    run.add_argument("--timeout", type=float, help="seconds per cell (default 300 on GPU, 120 on CPU)")
    run.add_argument("--budget", type=float, help="seconds of sampling per metric (default 1)")
    run.add_argument(
        "--min-samples", type=int, default=5, help="samples per timed metric, at least (default 5)"
    )
    run.add_argument("--no-live", action="store_true", help="plain progress lines even on a terminal")
    run.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this host's GPUs (or CPU); ray: one task per cell on a Ray cluster",
    )
    run.add_argument("--address", help="Ray cluster address (default: start a local one)")
    run.add_argument(
        "--vram-limit",
        help="emulate a smaller GPU, e.g. 24GiB (CUDA: allocator fraction; CPU: RLIMIT_DATA on the cell process)",
    )
    run.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the matrix the arguments name, then render its report; the exit code."""
    from bench.analysis.report import render
    from bench.run.session import RunRequest, run_stage

    spec = load_spec(args)
    if args.vram_limit:
        spec = spec.with_overrides(vram_limit_bytes=parse_size(args.vram_limit, "--vram-limit"))
    request = RunRequest(
        spec=spec,
        out=Path(args.out) if args.out else None,
        resume=args.resume,
        shard=args.shard,
        timeout_s=args.timeout,
        budget_s=args.budget,
        min_samples=args.min_samples,
        live=False if args.no_live else None,
        executor=args.executor,
        address=args.address,
    )
    directory = run_stage(request)
    paths = render(directory)
    print(f"report: {paths['markdown']} · {paths['html']}")
    return 0
