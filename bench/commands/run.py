"""`loadbench run`: run a matrix, then render its report.

The run stage (bench.run.session) ends with the run directory written; the report is rendered here,
after it returns, because the run stage never imports analysis.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from bench.commands.plan import add_spec_args, load_spec
from bench.errors import EXIT_BAD_INPUT
from bench.schema import MIN_SAMPLES
from bench.units import argtype, positive_int, positive_seconds, shard


def min_samples(text: str, field: str) -> int:
    """--min-samples: a spread needs two samples."""
    return positive_int(text, field, minimum=2)


def register(sub: Any) -> None:
    """Add the `run` subcommand to the CLI's subparsers."""
    run = sub.add_parser("run", help="run a matrix (default: the embedded tiny model on this host)")
    add_spec_args(run)
    run.add_argument("--out", help="run directory (default: runs/<time>-<spec>)")
    run.add_argument("--resume", action="store_true", help="continue a run: skip cells with a final record")
    run.add_argument(
        "--shard", type=argtype(shard, "--shard"), help="I/N: run only this deterministic share of the cells"
    )
    run.add_argument(
        "--timeout",
        type=argtype(positive_seconds, "--timeout"),
        help="seconds per cell, above 0 (default 300 on GPU, 120 on CPU)",
    )
    run.add_argument(
        "--budget",
        type=argtype(positive_seconds, "--budget"),
        help="seconds of sampling per metric, above 0 (default 1; --min-samples are taken whatever it is)",
    )
    run.add_argument(
        "--min-samples",
        type=argtype(min_samples, "--min-samples"),
        default=MIN_SAMPLES,
        help=f"samples per timed metric, at least (default {MIN_SAMPLES}, at least 2)",
    )
    run.add_argument("--no-live", action="store_true", help="plain progress lines even on a terminal")
    run.add_argument(
        "--no-quality",
        dest="quality",
        action="store_false",
        help="no quality reference and no quality pass (quality columns null with the reason)",
    )
    run.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this host's GPUs (or CPU); ray: one task per cell on a Ray cluster",
    )
    run.add_argument("--address", help="Ray cluster address (default: start a local one)")
    run.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the matrix the arguments name, then render its report; the exit code."""
    from bench.run.accounting import TimeAccounting
    from bench.run.node import begin_template, stop_template, template_modules

    spec = load_spec(args)  # --vram-limit included
    try:
        if args.executor == "local":  # as early as its modules are known: it imports while this process works
            begin_template(template_modules(spec.quant))
        clock = TimeAccounting()  # its clock starts at the process's start: all of the above is `startup`
        report_imports = threading.Thread(target=_import_report, name="report-imports", daemon=True)
        report_imports.start()  # while the template starts; joined before the first cell
        result = _run_stage(args, spec, clock, report_imports.join)
    finally:  # no process of the run outlives the command: the forkserver and the resource tracker
        stop_template()
    try:
        with clock.stage("report"):
            from bench.analysis.report import render

            paths = render(result.directory)
        books = write_books(result.directory, clock)
    except OSError as exc:  # a full disk, a read-only directory: the records were fsynced before this
        print(
            f"loadbench: the run's records are safe in {result.directory}, but its report could not be "
            f"written ({exc.strerror or exc}); free some space and run `loadbench report {result.directory}`.",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    print(f"report: {paths['markdown']} · {paths['html']}")
    print(
        f"time: {books['wall_s']:.1f} s, of which cells measured {books['cells_measured_s']:.1f} s "
        f"(harness share {books['harness_share']:.0%})"
    )
    return result.exit_code


def _run_stage(args: argparse.Namespace, spec: Any, clock: Any, before_cells: Any) -> Any:
    """The run stage (bench.run.session) of the arguments' request; its StageResult."""
    from bench.run.session import RunRequest, run_stage

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
        fit_check=args.fit_check,
        quality=args.quality,
        online=args.online,
        accounting=clock,
        before_cells=before_cells,
    )
    return run_stage(request)


def _import_report() -> None:
    """The report's libraries (pandas, matplotlib: seconds), imported while this process waits for the
    template, so rendering after the last cell is only rendering."""
    import matplotlib.figure  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401

    import bench.analysis.report  # noqa: F401


def write_books(directory: Path, clock: Any) -> dict[str, Any]:
    """run.json's final `time_accounting`, with the report's rendering in it; the report rendered just
    before shows the books as they stood when the cells ended."""
    from bench.run.store import RunStore
    from bench.schema import TIME_ACCOUNTING_KEY

    store = RunStore.open(directory)
    books: dict[str, Any] = clock.books(store.records())
    store.set_meta(TIME_ACCOUNTING_KEY, books)
    return books
