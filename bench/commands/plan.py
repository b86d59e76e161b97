"""`loadbench plan`: the cells a run would measure and why any are skipped; nothing is built or run.

It also holds the spec arguments and their reading (`add_spec_args`, `load_spec`), which `loadbench run`
shares: both commands must read a spec the same way, or `plan` would not show what `run` does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.errors import EXIT_OK, SpecError
from bench.units import argtype, parse_size, positive_int

# bench.plan.spec.QUANT_VARIANTS, spelled out so `--help` imports no loader (a test keeps them equal)
QUANT_HELP = (
    "comma list: none,nf4,fp4,nf4-dq,fp4-dq,8bit (bitsandbytes); torchao-int8,torchao-int4,torchao-float8,"
    "hqq-4bit,hqq-8bit,quanto-int8,quanto-int4,fp8 (the quant extra; docs/quantization.md)"
)

__all__ = ["SPEC_OVERRIDES", "add_spec_args", "load_spec", "register", "run"]

# The flags that override a spec's fields, by their argparse dest (the MatrixSpec field names).
SPEC_OVERRIDES = (
    "model",
    "dtype",
    "quant",
    "attn",
    "grad_ckpt",
    "use_cache",
    "decode",
    "workloads",
    "batch",
    "seq",
    "new_tokens",
    "threads",
    "train_mode",
    "find_max",
    "max_batch",
    "max_seq",
    "at_max",
    "weights",
)


def add_spec_args(p: argparse.ArgumentParser) -> None:
    """The spec source (SPEC, --recipe or --preset) and the per-axis overrides of `run` and `plan`."""
    p.add_argument("spec", nargs="?", help="matrix spec YAML (default: the 'default' preset)")
    p.add_argument("--preset", help="a matrix preset from bench/presets (default, gpu)")
    p.add_argument("--recipe", help="an open-r1 / TRL recipe YAML: one cell with its knobs and shape")
    p.add_argument(
        "--model",
        help="hub id (ORG/NAME, from the Hugging Face cache), local checkpoint directory, or preset name",
    )
    p.add_argument("--revision", help="hub revision (branch, tag or commit) of --model (default: main)")
    p.add_argument(
        "--weights",
        choices=("auto", "real", "random"),
        help="real: the checkpoint's own weights; random: built from config.json (default: real when present)",
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="allow fetching config.json and tokenizer files (never weights) from the hub",
    )
    p.add_argument(
        "--trust-remote-code",
        dest="trust_remote_code",
        action="store_true",
        help="allow a model's own code to run (recorded in every record; never implied)",
    )
    p.add_argument("--dtype", help="comma list: auto,bfloat16,float16,float32")
    p.add_argument("--quant", help=QUANT_HELP)
    p.add_argument(
        "--attn",
        help="comma list: eager,sdpa,flash_attention_2,flash_attention_3,flex_attention,"
        "sdpa:math,sdpa:flash,sdpa:efficient,sdpa:cudnn (sdpa pinned to one kernel),kernels-flash (kernels hub)",
    )
    p.add_argument("--grad-ckpt", dest="grad_ckpt", help="comma list: off,on")
    p.add_argument(
        "--cache", dest="use_cache", help="comma list: auto,on,off (auto: off under checkpointing)"
    )
    p.add_argument(
        "--decode",
        help="comma list: dynamic,static,compiled (static KV cache; compiled: static + torch.compile, "
        "compile time recorded apart as decode.compile_s)",
    )
    p.add_argument("--workloads", help="comma list: prefill,train,decode")
    p.add_argument(
        "--batch", type=argtype(positive_int, "--batch"), help="sequences per batch (default: the spec's)"
    )
    p.add_argument(
        "--seq", type=argtype(positive_int, "--seq"), help="tokens per sequence (default: the spec's)"
    )
    p.add_argument(
        "--new-tokens",
        dest="new_tokens",
        type=argtype(positive_int, "--new-tokens"),
        help="tokens decode generates per sequence (default: the spec's)",
    )
    p.add_argument(
        "--threads",
        type=argtype(positive_int, "--threads"),
        help="CPU threads per cell (default 1: stable timings)",
    )
    p.add_argument(
        "--train-mode",
        dest="train_mode",
        help="comma list: full,lora (default: full unquantized, lora k-bit; k-bit + full is skipped)",
    )
    p.add_argument(
        "--find-max",
        dest="find_max",
        choices=("batch", "seq"),
        help="per cell, search the largest batch (at --seq) or seq (at --batch) that fits the memory budget",
    )
    p.add_argument(
        "--max-batch",
        dest="max_batch",
        type=argtype(positive_int, "--max-batch"),
        help="cap of --find-max batch (default 256)",
    )
    p.add_argument(
        "--max-seq",
        dest="max_seq",
        type=argtype(positive_int, "--max-seq"),
        help="cap of --find-max seq (default: the model's context)",
    )
    p.add_argument(
        "--at-max",
        dest="at_max",
        action="store_const",
        const=True,
        help="with --find-max: measure the workloads at the found shape",
    )
    p.add_argument(
        "--vram-limit",
        type=argtype(parse_size, "--vram-limit"),
        help="emulate a smaller GPU, with a unit, e.g. 24GiB (CUDA: allocator fraction; CPU: RLIMIT_DATA on the cell process)",
    )
    p.add_argument(
        "--no-fit-check",
        dest="fit_check",
        action="store_false",
        help="load every cell, even one predicted not to fit the memory it would have",
    )


def load_spec(args: argparse.Namespace) -> Any:
    """The MatrixSpec the arguments name: one source (default: the 'default' preset), then the overrides."""
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
    spec = spec.with_overrides(**{k: getattr(args, k, None) for k in SPEC_OVERRIDES})
    if getattr(args, "vram_limit", None):  # bytes already: argparse parsed the size
        spec = spec.with_overrides(vram_limit_bytes=args.vram_limit)
    load = dict(spec.load)
    if getattr(args, "revision", None):
        load["revision"] = args.revision
    if getattr(args, "trust_remote_code", False):
        load["trust_remote_code"] = True
    return spec.with_overrides(load=tuple(sorted(load.items()))) if load != dict(spec.load) else spec


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `loadbench plan [SPEC] [overrides]`."""
    p = subparsers.add_parser("plan", help="the cells a run would measure, and why any are skipped")
    add_spec_args(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Print one row per planned cell: its knobs and `run` or `skip: <reason>`."""
    from rich.console import Console
    from rich.table import Table

    from bench.plan.capabilities import probe_cached
    from bench.plan.planning import make_plan
    from bench.units import fmt_bytes

    plan = make_plan(load_spec(args), probe_cached().host, online=args.online, fit_check=args.fit_check)
    if plan.model is not None:
        print(f"model {plan.model.describe()}")
    table = Table(title=f"{plan.spec.name}: {len(plan.runnable)} of {len(plan.cells)} cells run")
    for col in (
        "cell_id",
        "dtype",
        "quant",
        "attn",
        "ckpt",
        "cache",
        "decode",
        "train",
        "predicted / available",
        "plan",
    ):
        table.add_column(col)
    for c in plan.cells:
        verdict = "run" if c.skip_reason is None else f"skip: {c.skip_reason}"
        if c.dropped and c.skip_reason is None:
            verdict += "".join(f"; no {w}: {why}" for w, why in c.dropped)
        fit = dict(c.fit)
        memory = (
            f"{fmt_bytes(fit.get('fit.predicted_bytes'))} / {fmt_bytes(fit.get('fit.available_bytes'))}"
            if fit.get("fit.verdict") != "off"
            else "fit check off"
        )
        table.add_row(
            c.cell_id,
            c.dtype,
            c.quant,
            c.attn,
            "on" if c.grad_ckpt else "off",
            c.use_cache,
            c.decode,
            c.mode,
            memory,
            verdict,
        )
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    return EXIT_OK
