"""The `loadbench estimate` table: every knob combination of an architecture, its peaks and whether it fits.

The rows are plain strings so tests read them; bench.commands.estimate prints them.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from typing import Any

from bench.plan.estimate.arch import Arch, arch_from_config, config_for
from bench.plan.estimate.phases import breakdown
from bench.plan.spec import load_preset
from bench.units import fmt_bytes, parse_size

__all__ = ["arch_for", "estimate_table"]


def _axis(text: str | None, default: Sequence[Any]) -> list[Any]:
    """A comma list from the command line, or the preset's values when none was given."""
    if not text:
        return list(default)
    return [s.strip() for s in text.split(",") if s.strip()]


def arch_for(args: argparse.Namespace) -> tuple[str, Arch]:
    """The model the table is about and its shapes: --model through the resolver (hub id in the cache,
    --online config, local path, preset: config only, nothing built), else --arch as before."""
    model = getattr(args, "model", None)
    if not model:
        return args.arch, config_for(args.arch)
    from bench.plan.models import resolve

    resolved = resolve(
        model,
        revision=getattr(args, "revision", None),
        online=bool(getattr(args, "online", False)),
        trust_remote_code=bool(getattr(args, "trust_remote_code", False)),
    )
    return model, arch_from_config(resolved.config)


def estimate_table(args: argparse.Namespace) -> tuple[list[str], list[list[str]], str]:
    """Header, rows and title of the `loadbench estimate` table (separate from printing, for tests)."""
    spec = load_preset(args.preset)
    name, arch = arch_for(args)
    vram = args.vram if isinstance(args.vram, int) or args.vram is None else parse_size(args.vram, "--vram")
    batch = args.batch or spec.shape.batch
    seq = args.seq or spec.shape.seq
    new = args.new_tokens or spec.shape.new_tokens
    dtypes = _axis(args.dtype, spec.dtype)
    quants = _axis(args.quant, spec.quant)
    attns = _axis(args.attn, spec.attn)
    phases: tuple[str, ...]
    if args.task == "train":
        ckpts = [c in ("on", "true", "1", "yes") for c in _axis(args.grad_ckpt, ["off", "on"])]
        phases = ("load", "train")
    else:
        ckpts, phases = [False], ("load", "prefill", "decode")
    header = ["dtype", "quant", "attn", "ckpt", "weights", *phases, "peak"]
    if vram is not None:
        header.append(f"fits {fmt_bytes(vram)}")
    rows = []
    for dtype, quant, attn, ckpt in itertools.product(dtypes, quants, attns, ckpts):
        parts = breakdown(
            arch,
            dtype=dtype,
            quant=quant,
            attn=attn,
            grad_ckpt=ckpt,
            batch=batch,
            seq=seq,
            new_tokens=new,
            device=args.device,
        )
        peaks = [parts[p].total_bytes for p in phases]
        row = [dtype, quant, attn, "on" if ckpt else "off", fmt_bytes(parts["load"].terms["weights"])]
        row += [fmt_bytes(x) for x in peaks] + [fmt_bytes(max(peaks))]
        if vram is not None:
            peak = max(peaks)
            row.append("yes" if peak <= 0.9 * vram else "tight" if peak <= vram else "no")
        rows.append(row)
    title = (
        f"{name}: predicted peak memory, {args.task}, batch {batch} × seq {seq}"
        + (f", {new} new tokens" if args.task == "infer" else "")
        + (" (incl. CUDA context)" if args.device == "cuda" else " (tensors; add the process RSS)")
    )
    return header, rows, title
