"""`loadbench ab --base PY --new PY [matrix]`: base and new measured interleaved in one run, judged pairwise.

A side is an interpreter (a venv: main's checkout against a pull request's, transformers 5.24 against 5.25)
plus environment variables (`--new-env K=V`: the same interpreter twice is a valid A/B). Exit codes as
`compare`: 0 no regression, 1 a regression, 2 bad input, 3 measurements missing (--resume runs them).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from bench.commands.compare import _alpha, _fraction
from bench.commands.plan import add_spec_args, load_spec
from bench.errors import EXIT_INCOMPLETE, EXIT_OK, EXIT_REGRESSION, SpecError
from bench.units import argtype, positive_int, positive_seconds

__all__ = ["register", "run_ab_command"]

DEFAULT_ROUNDS = 8
DEFAULT_BUDGET_S = 0.03
DEFAULT_ROUND_SAMPLES = 3


def env_pair(text: str) -> tuple[str, str]:
    """K=V of --base-env / --new-env."""
    key, sep, value = text.partition("=")
    if not sep or not key or not key.replace("_", "a").isalnum():
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE (a variable name, '=', its value), got {text!r}"
        )
    return key, value


def rounds(text: str, flag: str = "--rounds") -> int:
    """--rounds: 1 to MAX_EXACT (the signed-rank tables' reach)."""
    from bench.analysis.ab.paired import MAX_EXACT

    value = positive_int(text, flag, minimum=1)
    if value > MAX_EXACT:
        raise SpecError(f"{flag}={value} is more than {MAX_EXACT}; give 1 to {MAX_EXACT}.")
    return value


def interpreter(text: str, flag: str) -> str:
    """--base / --new: a Python interpreter (a path, or a name on PATH such as python3), checked when the
    command runs (the parser accepts any text, so documented commands parse on any machine)."""
    import shutil

    found = text if os.sep in text else shutil.which(text)
    if found is None or not os.access(found, os.X_OK) or Path(found).is_dir():
        raise SpecError(
            f"{flag} {text!r} is not an executable Python interpreter; give one that has loadbench installed "
            "(a venv's bin/python, or python3)."
        )
    return found


def register(sub: Any) -> None:
    """Add the `ab` subcommand."""
    p = sub.add_parser(
        "ab",
        help="a CI gate: base and new interleaved, judged pairwise",
        description=__doc__,
    )
    p.add_argument("--base", required=True, help="the base side's Python interpreter (with loadbench)")
    p.add_argument("--new", required=True, help="the new side's Python interpreter (with loadbench)")
    p.add_argument(
        "--base-env", action="append", type=env_pair, default=[], metavar="K=V", help="a variable for base"
    )
    p.add_argument(
        "--new-env", action="append", type=env_pair, default=[], metavar="K=V", help="a variable for new"
    )
    add_spec_args(p)
    p.add_argument(
        "--rounds",
        type=argtype(rounds, "--rounds"),
        default=DEFAULT_ROUNDS,
        help=f"rounds per cell at most; a cell stops once its verdict is decided (default {DEFAULT_ROUNDS})",
    )
    p.add_argument(
        "--min-effect",
        type=_fraction,
        default=0.05,
        help="smallest change that counts, as a fraction or percent (default 5%%)",
    )
    p.add_argument(
        "--alpha",
        type=_alpha,
        default=0.05,
        help="false-discovery rate, Benjamini-Hochberg over all timed metrics (default 0.05)",
    )
    p.add_argument(
        "--seed", type=argtype(positive_int, "--seed"), help="order of the rounds (default: drawn, recorded)"
    )
    p.add_argument(
        "--budget",
        type=argtype(positive_seconds, "--budget"),
        default=DEFAULT_BUDGET_S,
        help=f"seconds of sampling per metric per round (default {DEFAULT_BUDGET_S})",
    )
    p.add_argument(
        "--min-samples",
        type=argtype(positive_int, "--min-samples"),
        default=DEFAULT_ROUND_SAMPLES,
        help=f"samples per metric per round, at least (default {DEFAULT_ROUND_SAMPLES})",
    )
    p.add_argument("--timeout", type=argtype(positive_seconds, "--timeout"), help="seconds per cell")
    p.add_argument("--no-quality", dest="quality", action="store_false", help="no quality pass")
    p.add_argument("--out", help="run directory (default: runs/<time>-<spec>-ab)")
    p.add_argument("--resume", action="store_true", help="continue an ab run: measure what is missing")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown", help="what to print")
    p.set_defaults(func=run_ab_command)


def run_ab_command(args: argparse.Namespace) -> int:
    """Run both sides, write ab.md / ab.json, print the verdict; the exit code."""
    from bench.analysis.ab import render_ab, settled
    from bench.run.ab.session import ABRequest, run_ab
    from bench.run.ab.sides import SideSpec

    base, new = interpreter(args.base, "--base"), interpreter(args.new, "--new")
    spec = load_spec(args)
    min_effect, alpha = args.min_effect, args.alpha
    request = ABRequest(
        spec=spec,
        sides=(
            SideSpec("base", base, tuple(args.base_env)),
            SideSpec("new", new, tuple(args.new_env)),
        ),
        rounds=args.rounds,
        seed=args.seed,
        out=Path(args.out) if args.out else None,
        resume=args.resume,
        timeout_s=args.timeout,
        budget_s=args.budget,
        min_samples=args.min_samples,
        quality=args.quality,
        fit_check=args.fit_check,
        online=args.online,
        settled=lambda records, cells: settled(records, min_effect, alpha, cells),
        judgement={"min_effect": min_effect, "alpha": alpha},
    )
    result = run_ab(request)
    paths, judgement = render_ab(result.directory)
    text = paths["json" if args.format == "json" else "markdown"].read_text(encoding="utf-8")
    print(text, end="")
    print(f"ab: {result.wall_s:.1f} s · {paths['markdown']} · {paths['json']}", file=sys.stderr)
    if judgement.regressed:
        return EXIT_REGRESSION
    if result.missing:
        return EXIT_INCOMPLETE
    return EXIT_OK
