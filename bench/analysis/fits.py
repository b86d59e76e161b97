"""What fits: the largest batch or seq each configuration reached under a memory budget (--find-max rows).

The report renders these rows as a "what fits" table per budget, and recommend turns them into one
sentence ("bfloat16/nf4/sdpa/ckpt trains seq 8192 at batch 4 under 24 GiB; bfloat16/none/sdpa/no-ckpt
only seq 2048"). Every figure is a record's; a row whose search found nothing says 0, not a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.analysis.frame import rows
from bench.analysis.values import is_missing, number
from bench.units import fmt_bytes

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Fit", "fit_rows", "fit_sentence"]

_COLUMNS = (
    "status",
    "label",
    "workloads",
    "batch",
    "seq",
    "vram_limit_bytes",
    "train.tokens_per_s",
    "prefill.tokens_per_s",
    "max.batch",
    "max.seq",
    "max.at_least",
    "max.at_max",
    "max.budget_bytes",
    "max.estimate",
    "max.probes",
    "max.peak_bytes",
)


@dataclass(frozen=True)
class Fit:
    """One configuration's --find-max answer under one budget."""

    label: str
    task: str  # "train" or "infer"
    target: str  # "batch" or "seq"
    answer: int
    at_least: bool
    other: str  # the fixed side of the shape, e.g. "seq 512"
    budget_bytes: float | None
    peak_bytes: float | None
    tokens_per_s: float | None  # measured at the answer (--at-max), else None
    probes: int | None
    estimate: int | None

    @property
    def answer_text(self) -> str:
        return f"{'at least ' if self.at_least else ''}{self.answer}"


def _task(row: dict[str, Any]) -> str:
    return "train" if "train" in str(row.get("workloads") or "").split(",") else "infer"


def fit_rows(frame: pd.DataFrame) -> list[Fit]:
    """One Fit per ok row that carries max.batch or max.seq, largest answer first within each budget."""
    out = []
    for row in rows(frame, _COLUMNS):
        if row.get("status") != "ok":
            continue
        target = next((t for t in ("batch", "seq") if not is_missing(row.get(f"max.{t}"))), None)
        if target is None:
            continue
        other = "seq" if target == "batch" else "batch"
        task = _task(row)
        rate = number(row.get("train.tokens_per_s" if task == "train" else "prefill.tokens_per_s"))
        budget = number(row.get("vram_limit_bytes")) or number(row.get("max.budget_bytes"))
        estimate = number(row.get("max.estimate"))
        probes = number(row.get("max.probes"))
        out.append(
            Fit(
                label=str(row.get("label")),
                task=task,
                target=target,
                answer=int(row[f"max.{target}"]),
                at_least=bool(row.get("max.at_least")),
                other=f"{other} {row.get(other)}",
                budget_bytes=budget,
                peak_bytes=number(row.get("max.peak_bytes")),
                tokens_per_s=rate if row.get("max.at_max") else None,
                probes=int(probes) if probes is not None else None,
                estimate=int(estimate) if estimate is not None else None,
            )
        )
    out.sort(key=lambda f: (f.budget_bytes or 0, f.task, f.target, -f.answer))
    return out


def fit_sentence(frame: pd.DataFrame, task: str, vram_bytes: float) -> str | None:
    """The --find-max answers for a task under budgets up to vram_bytes, as one sentence; None if none."""
    want = "train" if task == "train" else "infer"
    fits = [f for f in fit_rows(frame) if f.task == want and (f.budget_bytes or 0) <= vram_bytes]
    if not fits:
        return None
    verb = "trains" if want == "train" else "runs"
    fits.sort(key=lambda f: (f.target, -f.answer))
    first, rest = fits[0], fits[1:]
    text = (
        f"Largest shapes measured with --find-max: {first.label} {verb} {first.target} {first.answer_text} "
        f"at {first.other} under {fmt_bytes(first.budget_bytes)}"
    )
    for fit in rest:
        text += f"; {fit.label} {'only ' if fit.answer < first.answer else ''}{fit.target} {fit.answer_text}"
        if fit.budget_bytes != first.budget_bytes or fit.other != first.other:
            text += f" at {fit.other} under {fmt_bytes(fit.budget_bytes)}"
    return text + "."
