"""loadbench: measure which way to load a causal language model on this hardware."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loader.errors import LoadConfigError

EXIT_BAD_INPUT = 2


def _add_spec_args(p: argparse.ArgumentParser) -> None:
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
    from bench.plan.matrix import MatrixSpec, load_preset

    sources = [s for s in (args.spec, args.recipe, args.preset) if s]
    if len(sources) > 1:
        raise LoadConfigError("give one of SPEC, --recipe or --preset, not several.")
    if args.recipe:
        spec = MatrixSpec.from_recipe(args.recipe)
    elif args.spec:
        spec = MatrixSpec.from_yaml(args.spec)
    else:
        spec = load_preset(args.preset or "default")
    overrides = {
        k: getattr(args, k)
        for k in (
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
    }
    return spec.with_overrides(**overrides)


def _caps() -> Any:
    from bench.plan.capabilities import probe_cached

    return probe_cached()


def _cmd_plan(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from bench.plan.planning import make_plan

    plan = make_plan(load_spec(args), _caps().host)
    table = Table(title=f"{plan.spec.name}: {len(plan.runnable)} of {len(plan.cells)} cells run")
    for col in ("cell_id", "dtype", "quant", "attn", "ckpt", "cache", "plan"):
        table.add_column(col)
    for c in plan.cells:
        verdict = "run" if c.skip_reason is None else f"skip: {c.skip_reason}"
        if c.dropped and c.skip_reason is None:
            verdict += "".join(f"; no {w}: {why}" for w, why in c.dropped)
        table.add_row(
            c.cell_id, c.dtype, c.quant, c.attn, "on" if c.grad_ckpt else "off", c.use_cache, verdict
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from bench.run.session import RunRequest, run_matrix
    from bench.units import parse_size

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
    return run_matrix(request)


def _cmd_env(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from bench.plan.capabilities import render_env

    caps = _caps()
    if args.json:
        print(json.dumps(caps.to_dict(), indent=2, default=str))
    else:
        render_env(caps, Console())
    return 0


def _cmd_checkpoint(args: argparse.Namespace) -> int:
    from bench.plan.checkpoints import list_presets, make_checkpoint

    if args.list:
        print("\n".join(list_presets()))
        return 0
    start = time.perf_counter()
    path = make_checkpoint(args.arch, args.out, dtype=args.dtype, seed=args.seed)
    print(f"{path}  ({time.perf_counter() - start:.2f} s)")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from bench.run.store import merge

    store = merge(args.dirs, args.out)
    print(f"merged {len(args.dirs)} shard(s) into {store.directory} ({len(store.final_cell_ids())} cells)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a matrix (default: the embedded tiny model on this host)")
    _add_spec_args(run)
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
    run.set_defaults(func=_cmd_run)

    plan = sub.add_parser("plan", help="list the cells a run would measure, and why any are skipped")
    _add_spec_args(plan)
    plan.set_defaults(func=_cmd_plan)

    env = sub.add_parser("env", help="what this host can run, and why not")
    env.add_argument("--json", action="store_true")
    env.set_defaults(func=_cmd_env)

    ck = sub.add_parser("checkpoint", help="build a synthetic checkpoint (random weights, local tokenizer)")
    ck.add_argument("--arch", default="tiny-llama", help="architecture preset (see --list)")
    ck.add_argument("--out", default=None, help="output directory (default: the cache)")
    ck.add_argument("--dtype", default=None, help="weights dtype (default: the preset's)")
    ck.add_argument("--seed", type=int, default=0)
    ck.add_argument("--list", action="store_true", help="list architecture presets")
    ck.set_defaults(func=_cmd_checkpoint)

    from bench.analysis import compare, export, recommend, report
    from bench.plan import estimate

    for module in (report, compare, recommend, export, estimate):
        module.register(sub)

    merge = sub.add_parser("merge", help="join shard run directories into one")
    merge.add_argument("dirs", nargs="+")
    merge.add_argument("--out", required=True)
    merge.set_defaults(func=_cmd_merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LoadConfigError as exc:  # StoreError, SpecError, CheckpointError: all one sentence
        print(f"loadbench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as exc:
        print(f"loadbench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("loadbench: interrupted; run again with --resume to continue.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
