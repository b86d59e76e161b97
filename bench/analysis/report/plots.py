"""The report's plots as inline SVG: peak memory against throughput (with the Pareto front) and tok/s by knob.

Figures are made outside pyplot (no global state, no GUI backend), text is drawn as paths so no record
string survives as text, and ids are unique per plot so two plots on one page cannot swap clip paths.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.analysis.report.tables import View, knob_texts, peak_source
from bench.analysis.values import knob_text, short
from bench.schema import WORKLOADS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Plot", "all_plots", "knob_figure", "knob_plot", "pareto_front", "scatter_figure", "scatter_plot"]

# Scatter plots with more points than this embed their points as a PNG inside the SVG: same picture,
# a fraction of the bytes and the time.
RASTER_POINTS = 2000
MAX_CATEGORIES = 30

PALETTE = (
    "#4b7bb5",
    "#5aa36b",
    "#c4923a",
    "#8a63b3",
    "#c0504d",
    "#4aa3a8",
    "#7f7f7f",
    "#b5651d",
    "#6b8e23",
    "#996699",
)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (memory, throughput) points no other point beats on both; sorted by memory."""
    front: list[int] = []
    best = -math.inf
    for _, negative_rate, index in sorted((x, -y, i) for i, (x, y) in enumerate(points)):
        if -negative_rate > best:
            front.append(index)
            best = -negative_rate
    return front


@dataclass(frozen=True)
class Plot:
    """One inline SVG figure and the sentence that says what it shows."""

    caption: str
    svg: str


def _new_figure(width: float, height: float) -> Figure:
    """A figure outside pyplot (no global state, no GUI backend); margins are set by hand because
    automatic layout draws every figure twice."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


_SVG_DROP = re.compile(
    r"<\?xml.*?\?>|<!DOCTYPE.*?>|<!--.*?-->|<metadata>.*?</metadata>|\s+xmlns(?::\w+)?=\"[^\"]*\"", re.S
)
_SVG_ID = re.compile(r"(\bid=\"|xlink:href=\"#|\bhref=\"#|url\(#)")


def svg_text(fig: Figure, prefix: str) -> str:
    """Inline SVG: text drawn as paths (no record string survives as text), no comments, no namespace
    URLs, ids unique to this plot so two plots on one page cannot swap clip paths."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "loadbench"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = _SVG_DROP.sub("", buffer.getvalue()).strip()
    return _SVG_ID.sub(lambda m: f"{m.group(1)}{prefix}-", text)


@dataclass(frozen=True)
class Scatter:
    """One workload's memory/throughput points, its Pareto front and the front's labels."""

    workload: str
    memory_column: str
    memory_name: str
    points: list[tuple[float, float]]  # (peak GiB, median tok/s)
    spreads: list[tuple[float, float]]  # (p10, p90) tok/s of each point; the median itself when absent
    front: list[int]
    labels: dict[int, str]  # point index -> label, for the front only


def scatter_data(view: View, workload: str) -> Scatter | None:
    """Ok cells with both a peak memory and a median tok/s for this workload."""
    mem_column, mem_name = peak_source(view.ok, workload)
    rate = f"{workload}.tokens_per_s"
    if mem_column is None or rate not in view.ok.columns:
        return None
    data = view.ok.dropna(subset=[mem_column, rate])
    if data.empty:
        return None
    points = list(zip((data[mem_column] / 2**30).tolist(), data[rate].tolist(), strict=True))
    medians = data[rate].tolist()
    lows = data[f"{rate}.p10"].tolist() if f"{rate}.p10" in data.columns else medians
    highs = data[f"{rate}.p90"].tolist() if f"{rate}.p90" in data.columns else medians
    spreads = [
        (float(lo) if lo == lo and lo is not None else m, float(hi) if hi == hi and hi is not None else m)
        for m, lo, hi in zip(medians, lows, highs, strict=True)
    ]
    front = pareto_front(points)
    rows = data.iloc[front]
    texts = [knob_texts(rows, k) for k in view.identity]
    labels = {i: short(" ".join(t[n] for t in texts)) for n, i in enumerate(front)}
    return Scatter(workload, mem_column, mem_name, points, spreads, front, labels)


def _draw_scatter(ax: Any, data: Scatter) -> None:
    import numpy as np

    xy = np.asarray(data.points, dtype=float)  # an array, not tuples: matplotlib masks tuples point by point
    spread = np.asarray(data.spreads, dtype=float)
    if len(xy) <= RASTER_POINTS:  # p10–p90 of every cell: overlapping bars are ties, not rankings
        yerr = np.vstack([(xy[:, 1] - spread[:, 0]).clip(min=0), (spread[:, 1] - xy[:, 1]).clip(min=0)])
        ax.errorbar(xy[:, 0], xy[:, 1], yerr=yerr, fmt="none", ecolor="#9aa9bd", elinewidth=0.8, capsize=2)
    ax.scatter(xy[:, 0], xy[:, 1], s=16, color="#7a8ca3", label="cell", rasterized=len(xy) > RASTER_POINTS)
    fx, fy = [data.points[i][0] for i in data.front], [data.points[i][1] for i in data.front]
    ax.plot(fx, fy, drawstyle="steps-post", color="#d0591c", linewidth=1.2)
    ax.scatter(fx, fy, s=40, color="#d0591c", label="Pareto front", zorder=3)
    if len(data.front) <= 12:  # numbers, not names, beside the points (they cannot overlap); names in a key
        for number, i in enumerate(data.front, start=1):
            offset = (4, 4) if number % 2 else (4, -9)
            ax.annotate(str(number), data.points[i], fontsize=7, xytext=offset, textcoords="offset points")
        key = "\n".join(f"{number}: {data.labels[i]}" for number, i in enumerate(data.front, start=1))
        ax.text(1.0, -0.16, key, transform=ax.transAxes, fontsize=6, ha="right", va="top")
    ax.set_xlabel(f"peak memory ({data.memory_name}), GiB", fontsize=8)
    ax.set_ylabel("tok/s (median)", fontsize=8)
    ax.set_title(data.workload, fontsize=10)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.margins(0.15, 0.1)  # room for the labels of the front's end points
    ax.legend(loc="lower right", fontsize=7)  # "best" searches every point: a second on 10k cells


def scatter_plot(view: View) -> Plot | None:
    """Peak memory against median tok/s, one panel per workload, the Pareto front marked."""
    drawn = scatter_figure(view)
    return None if drawn is None else Plot(drawn[1], svg_text(drawn[0], "scatter"))


def scatter_figure(view: View) -> tuple[Figure, str] | None:
    """The scatter plot's figure and caption (the report embeds it as SVG; scripts save it as PNG)."""
    panels = [d for d in (scatter_data(view, w) for w in WORKLOADS) if d is not None]
    if not panels:
        return None
    keys = max((len(d.front) for d in panels if len(d.front) <= 12), default=0)
    height = 4.0 + 0.11 * keys
    fig = _new_figure(4.2 * len(panels), height)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=(0.55 + 0.11 * keys) / height, top=0.86, wspace=0.3)
    for position, data in enumerate(panels, start=1):
        _draw_scatter(fig.add_subplot(1, len(panels), position), data)
    fig.suptitle("peak memory vs throughput", fontsize=11)
    caption = "Peak memory against median tok/s of the ok cells, bars from p10 to p90. " + " ".join(
        f"{d.workload}: {len(d.points)} cell(s), {len(d.front)} on the Pareto front (no other cell uses less "
        f"memory, {d.memory_column}, and is faster)."
        for d in panels
    )
    return fig, caption


def knob_medians(view: View, knob: str, workload: str) -> list[tuple[str, float]]:
    """(value, median tok/s) of the ok cells per value of a knob, at most MAX_CATEGORIES of them."""
    rate = f"{workload}.tokens_per_s"
    if rate not in view.ok.columns:
        return []
    medians = view.ok.groupby(knob, dropna=False, sort=True)[rate].median().dropna()
    return [(knob_text(knob, value), float(median)) for value, median in medians.items()][:MAX_CATEGORIES]


def knob_plot(view: View) -> Plot | None:
    """Median tok/s per value of every varying knob, one panel per workload: which value of a knob pays."""
    drawn = knob_figure(view)
    return None if drawn is None else Plot(drawn[1], svg_text(drawn[0], "knobs"))


def knob_figure(view: View) -> tuple[Figure, str] | None:
    """The per-knob bars' figure and caption."""
    panels = []
    for workload in WORKLOADS:
        bars = [
            (knob, value, median)
            for knob in view.varying
            for value, median in knob_medians(view, knob, workload)
        ]
        if bars:
            panels.append((workload, bars))
    if not panels:
        return None
    rows = max(len(bars) for _, bars in panels)
    fig = _new_figure(4.2 * len(panels), 1.3 + 0.22 * rows)
    fig.subplots_adjust(
        left=0.1, right=0.98, bottom=0.6 / (1.3 + 0.22 * rows), top=1 - 0.7 / (1.3 + 0.22 * rows)
    )
    fig.subplots_adjust(wspace=0.55)
    colors = {knob: PALETTE[i % len(PALETTE)] for i, knob in enumerate(view.varying)}
    for position, (workload, bars) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), position)
        labels = [short(f"{knob}={value}") for knob, value, _ in bars]
        ax.barh(range(len(bars)), [m for _, _, m in bars], color=[colors[k] for k, _, _ in bars])
        ax.set_yticks(range(len(bars)), labels)
        ax.invert_yaxis()
        ax.set_title(workload, fontsize=10)
        ax.set_xlabel("median tok/s", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("median tok/s by knob value", fontsize=11)
    caption = f"Median tok/s of the ok cells grouped by each knob that varies ({', '.join(view.varying)})."
    return fig, caption


def all_plots(view: View) -> list[Plot]:
    """The plots this run has data for."""
    return [p for p in (scatter_plot(view), knob_plot(view)) if p is not None]
