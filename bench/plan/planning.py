"""From a spec to a plan: resolve the model (configs only), expand the cells, apply the rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.plan.cells import Cell
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


def make_plan(spec: MatrixSpec, caps: HostCapabilities, *, online: bool = False) -> Plan:
    """The plan of a spec on a host: the resolved model, its fingerprint and cells. Reads configs only:
    random weights are built by `run` (bench.plan.models.materialize), never here."""
    model = resolve_spec_model(spec, online=online)
    cells = expand(spec, model.checkpoint, model.fingerprint, caps, model=model)
    return Plan(spec, model.checkpoint, model.fingerprint, cells, model)
