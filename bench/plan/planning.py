"""From a spec to a plan: resolve the model (configs only), expand the cells, apply the rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.plan.cells import Cell
from bench.plan.fit import MemoryBudget, apply_fit_check, available_memory
from bench.plan.models import ResolvedModel, resolve
from bench.plan.rules import expand
from bench.plan.spec import MatrixSpec
from loader.host import HostCapabilities


@dataclass(frozen=True)
class Plan:
    """A spec resolved to one checkpoint and expanded into cells, each marked run or skipped."""

    spec: MatrixSpec
    checkpoint: Path
    fingerprint: str
    cells: list[Cell]
    model: ResolvedModel | None = None

    @property
    def runnable(self) -> list[Cell]:
        """The cells that run (not skipped by a rule)."""
        return [c for c in self.cells if c.skip_reason is None]

    def to_dict(self) -> list[dict[str, Any]]:
        """One row per cell: id, label, whether it runs, and why not (or which workloads it drops)."""
        return [
            {
                "cell_id": c.cell_id,
                "label": c.label,
                "run": c.skip_reason is None,
                "reason": c.skip_reason,
                "dropped": dict(c.dropped),
                "fit": dict(c.fit),
            }
            for c in self.cells
        ]


def resolve_spec_model(spec: MatrixSpec, *, online: bool = False) -> ResolvedModel:
    """The spec's model, resolved (config files only) with the spec's revision, trust and weights."""
    load = dict(spec.load)
    return resolve(
        spec.model,
        revision=load.get("revision"),
        weights=spec.weights,
        online=online,
        trust_remote_code=bool(load.get("trust_remote_code", False)),
    )


def make_plan(
    spec: MatrixSpec,
    caps: HostCapabilities,
    *,
    online: bool = False,
    fit_check: bool = True,
    budget: MemoryBudget | None = None,
) -> Plan:
    """The plan of a spec on a host: the resolved model, its fingerprint and cells. Reads configs only:
    random weights are built by `run` (bench.plan.models.materialize), never here.

    fit_check: skip cells predicted not to fit (bench.plan.fit) in `budget`, by default what this
    host has now (free GPU memory or available RAM, capped by the spec's vram limit).
    """
    model = resolve_spec_model(spec, online=online)
    cells = expand(spec, model.checkpoint, model.fingerprint, caps, model=model)
    cells = check_fit(cells, model.config, caps, spec, fit_check, budget)
    return Plan(spec, model.checkpoint, model.fingerprint, cells, model)


def check_fit(
    cells: list[Cell],
    config: dict[str, Any],
    caps: HostCapabilities,
    spec: MatrixSpec,
    enabled: bool,
    budget: MemoryBudget | None,
) -> list[Cell]:
    """The fit check of the plan's cells against the memory a cell would have (off: columns say so)."""
    if not enabled:
        return apply_fit_check(cells, {}, None)
    return apply_fit_check(cells, config, budget or available_memory(caps.cuda, spec.vram_limit_bytes))
