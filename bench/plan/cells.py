"""Cells: one configuration to load and measure, its stable id, its record columns and its loader config."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.plan.spec import ATTN_VARIANTS, LORA_DEFAULTS, MEASURE_VERSION, QUANT_VARIANTS, Shape
from bench.schema import KNOB_DEFAULTS, cell_label, default_train_mode
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
    train_mode: str = ""  # "full" | "lora"; "" = the quantization's default (schema.default_train_mode)
    lora: tuple[tuple[str, Any], ...] = ()  # overrides of spec.LORA_DEFAULTS
    search: tuple[tuple[str, Any], ...] = ()  # --find-max: target, cap, at_max; () = one fixed shape
    decode: str = "dynamic"  # schema.DECODE_MODES: how the decode workload generates

    @property
    def mode(self) -> str:
        """The train mode this cell trains in, resolved."""
        return self.train_mode or default_train_mode(self.quant)

    @property
    def lora_settings(self) -> dict[str, Any]:
        """The LoRA setting of a lora cell: the defaults with the spec's (or recipe's) overrides."""
        return {**LORA_DEFAULTS, **dict(self.lora)}

    @property
    def find_max(self) -> dict[str, Any]:
        """The --find-max search of this cell ({} when it measures one fixed shape)."""
        return dict(self.search)

    fit: tuple[tuple[str, Any], ...] = ()  # the fit check's columns (bench.plan.fit); not part of cell_id
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
        # Likewise: a cell that trains by its quantization's default, with the default LoRA setting and no
        # search, keeps the id it had before these knobs existed (the committed baselines still match).
        if self.mode != default_train_mode(self.quant):
            key["train_mode"] = self.mode
        if self.lora and self.mode == "lora":
            key["lora"] = [list(kv) for kv in self.lora]
        if self.search:
            key["search"] = [list(kv) for kv in self.search]
        if self.decode != KNOB_DEFAULTS["decode"]:  # dynamic decode keeps the id it had before the axis
            key["decode"] = self.decode
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """The record's human name, e.g. "bfloat16/nf4/sdpa/no-ckpt/cache-auto"."""
        return cell_label(
            self.dtype, self.quant, self.attn, self.grad_ckpt, self.use_cache, self.mode, self.decode
        )

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
            "train_mode": self.mode,
            "decode": self.decode,
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
            gradient_checkpointing=self.grad_ckpt,
            use_cache=cache,
            **QUANT_VARIANTS[self.quant],
            **ATTN_VARIANTS[self.attn],
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
        for key in ("lora", "search"):
            data[key] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in data.get(key, ()))
        data["fit"] = tuple(tuple(kv) for kv in data.get("fit", ()))
        return cls(**data)
