"""From a spec to a plan: resolve the model to a checkpoint, expand the cells, apply the rules."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import SpecError
from bench.plan.cells import Cell
from bench.plan.checkpoints import checkpoint_fingerprint, list_presets, make_checkpoint
from bench.plan.fit import MemoryBudget, apply_fit_check, available_memory
from bench.plan.rules import expand
from bench.plan.spec import MatrixSpec
from loader.files import check_local_model_dir
from loader.host import HostCapabilities


@dataclass(frozen=True)
class Plan:
    """A spec resolved to one checkpoint and expanded into cells, each marked run or skipped."""

    spec: MatrixSpec
    checkpoint: Path
    fingerprint: str
    cells: list[Cell]

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


def resolve_model(model: str) -> Path:
    """A synthetic preset name becomes its (cached) checkpoint; a local directory is checked and used."""
    if model in list_presets():
        return make_checkpoint(model)
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path  # its weights are checked by each cell's loader, so damage ends cells as errors
    if path.exists():
        return check_local_model_dir(path)  # raises the sentence for a file or a dir without config.json
    raise SpecError(
        f"model {model!r} is neither an architecture preset ({', '.join(list_presets())}) nor a local checkpoint directory."
    )


def make_plan(
    spec: MatrixSpec, caps: HostCapabilities, *, fit_check: bool = True, budget: MemoryBudget | None = None
) -> Plan:
    """The plan of a spec on a host: its checkpoint (built if it is a preset), fingerprint and cells.

    fit_check: skip cells predicted not to fit (bench.plan.fit) in `budget`, by default what this
    host has now (free GPU memory or available RAM, capped by the spec's vram limit).
    """
    checkpoint = resolve_model(spec.model)
    fingerprint = checkpoint_fingerprint(checkpoint)
    cells = expand(spec, checkpoint, fingerprint, caps)
    return Plan(spec, checkpoint, fingerprint, check_fit(cells, checkpoint, caps, spec, fit_check, budget))


def check_fit(
    cells: list[Cell],
    checkpoint: Path,
    caps: HostCapabilities,
    spec: MatrixSpec,
    enabled: bool,
    budget: MemoryBudget | None,
) -> list[Cell]:
    """The fit check of the plan's cells against the memory a cell would have (off: columns say so)."""
    if not enabled:
        return apply_fit_check(cells, {}, None)
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    return apply_fit_check(cells, config, budget or available_memory(caps.cuda, spec.vram_limit_bytes))
