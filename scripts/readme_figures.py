#!/usr/bin/env python
"""The README's pictures: the HTML report's Pareto plot (peak memory vs throughput) and its per-knob bars,
drawn by the report's own code (bench.analysis.report.plots) from a real run, saved as PNG.

    python scripts/readme_figures.py                  # runs `loadbench run` (the default matrix) first
    python scripts/readme_figures.py RUN_DIR          # draws an existing run directory
    python scripts/readme_figures.py RUN_DIR --out docs/img

Writes OUT/pareto.png and OUT/knobs.png, and prints the run's directory, host and date (for the caption).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.analysis.frame import Run, frame_of
from bench.analysis.report.plots import knob_figure, scatter_figure
from bench.analysis.report.tables import View

ROOT = Path(__file__).resolve().parents[1]
DPI = 110


def fresh_run(out: Path) -> Path:
    """A real default run (`loadbench run`, offline, the embedded tiny model) into `out`."""
    subprocess.run([sys.executable, "-m", "bench.cli", "run", "--out", str(out), "--no-live"], check=True)
    return out


def save_figures(run_dir: Path, out: Path) -> list[Path]:
    """Draw the run's scatter and knob figures as the report does, and save them as PNG."""
    run = Run.open(run_dir)
    view = View.of(frame_of(run))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, drawn in (("pareto.png", scatter_figure(view)), ("knobs.png", knob_figure(view))):
        if drawn is None:
            raise SystemExit(f"{run_dir} has no ok cell with the data for {name}; run more cells")
        figure, _caption = drawn
        figure.patch.set_facecolor("white")
        figure.savefig(out / name, dpi=DPI, metadata={"Software": None})
        written.append(out / name)
    env = run.meta.get("environment", {})
    gpus = ", ".join(g.get("name", "?") for g in env.get("gpus_detail") or []) or "no GPU"
    print(
        f"run {run_dir}: {env.get('cpu_model')} ({env.get('cpu_cores_logical')} cores), {gpus}; {run.meta.get('created_at')}"
    )
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "run_dir", nargs="?", type=Path, help="a run directory (default: run the default matrix now)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "img", help="where the PNGs go (default docs/img)"
    )
    args = parser.parse_args(argv)
    if args.run_dir is None:
        with tempfile.TemporaryDirectory(prefix="loadbench-figures-") as tmp:
            paths = save_figures(fresh_run(Path(tmp) / "run"), args.out)
    else:
        paths = save_figures(args.run_dir, args.out)
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
