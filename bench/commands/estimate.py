"""`loadbench estimate`: predicted peak memory of every knob combination of an architecture (runs nothing).

The rows come from bench.plan.estimate.table; this module adds the flags and prints them with rich.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bench.errors import EXIT_OK
from bench.units import argtype, parse_size, positive_int

__all__ = ["register", "run"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `loadbench estimate` to the CLI's subparsers (bench.cli.build_parser)."""
    p = subparsers.add_parser(
        "estimate",
        help="predict each knob combination's peak memory; runs nothing",
        description="Predicted peak memory (bench/plan/estimate/) of every dtype × quantization × attention "
        "(× checkpointing for training) combination of an architecture, marked by whether it fits.",
    )
    p.add_argument(
        "--arch",
        default="qwen2.5-1.5b",
        help="architecture preset, checkpoint dir or config.json (default %(default)s)",
    )
    p.add_argument(
        "--model",
        help="any resolvable model: hub id in the HF cache, local path or preset (overrides --arch)",
    )
    p.add_argument("--revision", help="hub revision of --model (default: main)")
    p.add_argument("--online", action="store_true", help="allow fetching --model's config.json from the hub")
    p.add_argument(
        "--trust-remote-code",
        dest="trust_remote_code",
        action="store_true",
        help="allow a config with custom code (auto_map); never implied",
    )
    p.add_argument(
        "--vram",
        type=argtype(parse_size, "--vram"),
        default=None,
        help="memory to fit in, with a unit, e.g. 24GiB (default: no fit column)",
    )
    p.add_argument(
        "--task",
        choices=("train", "infer"),
        default="train",
        help="train: the load and train-step peaks; infer: load, prefill, decode (default %(default)s)",
    )
    p.add_argument(
        "--preset",
        default="gpu",
        help="matrix preset whose axes and shape are the defaults (default %(default)s)",
    )
    p.add_argument(
        "--batch", type=argtype(positive_int, "--batch"), help="sequences per batch (default: the preset's)"
    )
    p.add_argument(
        "--seq", type=argtype(positive_int, "--seq"), help="tokens per sequence (default: the preset's)"
    )
    p.add_argument(
        "--new-tokens",
        dest="new_tokens",
        type=argtype(positive_int, "--new-tokens"),
        help="tokens decode generates per sequence (default: the preset's)",
    )
    p.add_argument("--dtype", help="comma list (default: the preset's)")
    p.add_argument("--quant", help="comma list (default: the preset's)")
    p.add_argument("--attn", help="comma list (default: the preset's)")
    p.add_argument("--grad-ckpt", dest="grad_ckpt", help="comma list of off,on (train only)")
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda: peaks include the CUDA context; cpu: tensors only (default %(default)s)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Print the table (fit column in red/yellow when --vram is given); bad input raises and bench.cli exits 2."""
    from rich.console import Console
    from rich.table import Table

    from bench.plan.estimate.table import arch_for, estimate_table  # here: every command imports this module

    header, rows, title = estimate_table(args)
    table = Table(title=title)
    for i, col in enumerate(header):
        table.add_column(col, justify="right" if i >= 4 else "left")
    for row in rows:
        style = {"no": "red", "tight": "yellow"}.get(row[-1]) if args.vram else None
        table.add_row(*row, style=style)
    Console(width=200 if not sys.stdout.isatty() else None).print(table)
    for note in arch_for(args)[1].unmodelled:
        print(f"not modelled: {note}.")
    if args.vram:
        print("fits: yes = peak ≤ 90 % of the memory (room for allocator fragmentation); tight = ≤ 100 %.")
    return EXIT_OK
