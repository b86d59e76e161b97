"""Cells: one configuration to load and measure, its stable id, its record columns and its loader config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.plan.spec import MEASURE_VERSION, QUANT_VARIANTS, Shape
from bench.schema import cell_label
from loader import LoadConfig

__all__ = ["Cell"]


@dataclass(frozen=True)
class Cell:
    """One configuration to load and measure. `cell_id` is a stable hash of what makes it distinct."""

    model: str
    checkpoint: str  # fingerprint of the checkpoint files
    dtype: str
    quant: str
    attn: str
    grad_ckpt: bool
    use_cache: str
    workloads: tuple[str, ...]
    shape: Shape
    threads: int
    load: tuple[tuple[str, Any], ...] = ()
    vram_limit_bytes: int | None = None
    skip_reason: str | None = None
    dropped: tuple[tuple[str, str], ...] = ()  # workloads this cell cannot run, with the reason
    # Where the model came from and which weights it has (bench.plan.models); not part of cell_id,
    # because the checkpoint fingerprint already differs between real and random weights.
    model_source: str | None = None
    weights: str | None = None

    @property
    def cell_id(self) -> str:
        """16 hex digits of a hash of the checkpoint, knobs, workloads, shape and MEASURE_VERSION."""
        key = {
            "checkpoint": self.checkpoint,
            "knobs": [self.dtype, self.quant, self.attn, self.grad_ckpt, self.use_cache],
            "workloads": list(self.workloads),
            "shape": dataclasses.asdict(self.shape),
            "threads": self.threads,
            "load": [list(kv) for kv in self.load],
            "measure_version": MEASURE_VERSION,
        }
        if self.vram_limit_bytes is not None:  # only when set, so ids of unlimited cells stay as they were
            key["vram_limit_bytes"] = self.vram_limit_bytes
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """The record's human name, e.g. "bfloat16/nf4/sdpa/no-ckpt/cache-auto"."""
        return cell_label(self.dtype, self.quant, self.attn, self.grad_ckpt, self.use_cache)

    def knobs(self) -> dict[str, Any]:
        """The cell's knobs and shape as flat record columns: schema.KNOBS plus checkpoint and workloads.

        The order is the record's column order, which stays as it was (tests pin the set against KNOBS).
        """
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "dtype": self.dtype,
            "quant": self.quant,
            "attn": self.attn,
            "grad_ckpt": self.grad_ckpt,
            "use_cache": self.use_cache,
            "workloads": ",".join(self.workloads),
            "batch": self.shape.batch,
            "seq": self.shape.seq,
            "new_tokens": self.shape.new_tokens,
            "threads": self.threads,
            "vram_limit_bytes": self.vram_limit_bytes,
        }

    def record(self, status: str, reason: str | None) -> dict[str, Any]:
        """The start of this cell's record: identity, status and reason, and its knobs as columns."""
        return {
            "cell_id": self.cell_id,
            "status": status,
            "reason": reason,
            "label": self.label,
            **self.knobs(),
            "model_source": self.model_source,
            "weights": self.weights,
            "trust_remote_code": bool(dict(self.load).get("trust_remote_code", False)),
        }

    def load_config(self, model_path: str | Path) -> LoadConfig:
        """The loader config of this cell for a checkpoint directory (validated)."""
        cache = None if self.use_cache == "auto" else self.use_cache == "on"
        return LoadConfig(
            str(model_path),
            dtype=self.dtype,
            attn_implementation=self.attn,
            gradient_checkpointing=self.grad_ckpt,
            use_cache=cache,
            **QUANT_VARIANTS[self.quant],
            **dict(self.load),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with the cell_id (what a worker receives and the plan file holds)."""
        out = dataclasses.asdict(self)
        out["cell_id"] = self.cell_id
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        """Inverse of `to_dict` (the cell_id is derived, so it is dropped)."""
        data = dict(data)
        data.pop("cell_id", None)
        data["shape"] = Shape(**data["shape"])
        data["workloads"] = tuple(data["workloads"])
        data["load"] = tuple(tuple(kv) for kv in data["load"])
        data["dropped"] = tuple(tuple(kv) for kv in data["dropped"])
        return cls(**data)
