"""`loadbench env`: what this host can run, and why not (the capability probe, as a table or JSON)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.errors import EXIT_OK

__all__ = ["register", "run"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `loadbench env [--json]`."""
    p = subparsers.add_parser("env", help="what this host can run, and why not")
    p.add_argument("--json", action="store_true", help="the host facts and knob reasons as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Probe the host (cached) and print it; the probe never initialises CUDA in this process."""
    from rich.console import Console

    from bench.plan.capabilities import probe_cached, render_env

    caps = probe_cached()
    if args.json:
        print(json.dumps(caps.to_dict(), indent=2, default=str))
    else:
        render_env(caps, Console())
    return EXIT_OK
