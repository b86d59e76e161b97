"""`loadbench merge`: join the run directories of a sharded run into one (shards are disjoint by cell_id)."""

from __future__ import annotations

import argparse
from typing import Any

from bench.errors import EXIT_OK

__all__ = ["register", "run"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `loadbench merge DIR... --out DIR`."""
    p = subparsers.add_parser("merge", help="join shard run directories into one")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="shard run directories of one spec")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory for the merged run")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Merge the shards into a new directory and say how many cells it holds."""
    from bench.run.store import merge

    store = merge(args.dirs, args.out)
    print(f"merged {len(args.dirs)} shard(s) into {store.directory} ({len(store.final_cell_ids())} cells)")
    duplicates = store.meta.get("merge_duplicates") or 0
    if duplicates:
        print(
            f"loadbench: {duplicates} cell(s) had a final record in more than one shard; the first shard's was kept."
        )
    return EXIT_OK
