"""`loadbench checkpoint`: build a synthetic checkpoint (random weights of a preset architecture)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.errors import EXIT_OK

__all__ = ["register", "run"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `loadbench checkpoint [--arch A] [--out DIR] [--dtype D] [--seed N] [--list]`."""
    p = subparsers.add_parser("checkpoint", help="build a synthetic checkpoint (random weights, a tokenizer)")
    p.add_argument("--arch", default="tiny-llama", help="architecture preset (see --list)")
    p.add_argument("--out", default=None, help="output directory (default: the cache)")
    p.add_argument("--dtype", default=None, help="weights dtype (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default %(default)s)")
    p.add_argument("--list", action="store_true", help="list architecture presets")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """List the presets, or build (or find in the cache) one checkpoint and print its path and time."""
    from bench.plan.checkpoints import list_presets, make_checkpoint

    if args.list:
        print("\n".join(list_presets()))
        return EXIT_OK
    start = time.perf_counter()
    path = make_checkpoint(args.arch, args.out, dtype=args.dtype, seed=args.seed)
    print(f"{path}  ({time.perf_counter() - start:.2f} s)")
    return EXIT_OK
