"""What compare reads of a run: run.json, each cell's chosen record, its model and its environment.

Records come from the one run reader (bench.analysis.frame), so compare judges the same record of a cell
that the report shows. Environment fields that differ between two runs are listed first in the output,
because timings can differ for those reasons alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.analysis.frame import Run, latest_per_cell
from bench.run.store import environments
from bench.schema import SCHEMA_VERSION

__all__ = ["RunData", "env_differences", "model_key", "state_notes"]


@dataclass
class RunData:
    """What compare needs of one run: its run.json and the latest record of each cell."""

    directory: str
    meta: dict[str, Any]
    records: dict[str, dict[str, Any]]  # cell_id -> latest final record (or latest record if none is final)
    schema_versions: set[Any] = field(default_factory=set)

    @classmethod
    def from_records(
        cls, meta: Mapping[str, Any], records: Iterable[Mapping[str, Any]], directory: str = "<memory>"
    ) -> RunData:
        """A run held in memory (tests, merged data): schema versions are those of every record."""
        records = list(records)
        versions: set[Any] = {meta.get("schema_version", SCHEMA_VERSION)}
        versions.update(record.get("schema_version", SCHEMA_VERSION) for record in records)
        latest = {record["cell_id"]: record for record in latest_per_cell(records)}
        return cls(directory, dict(meta), latest, versions)

    @classmethod
    def load(cls, directory: str | Path) -> RunData:
        """StoreError (one sentence) when the directory is not a run or its run.json is damaged."""
        run = Run.open(directory)
        return cls.from_records(run.meta, run.records, str(directory))

    @property
    def model(self) -> str | None:
        """The model the run measured: the spec's, else the first record's."""
        spec = self.meta.get("spec")
        if isinstance(spec, Mapping) and spec.get("model"):
            return str(spec["model"])
        for record in self.records.values():
            if record.get("model"):
                return str(record["model"])
        return None

    @property
    def fingerprint(self) -> str | None:
        """The checkpoint's fingerprint: cell_ids are shared only when it is."""
        checkpoint = self.meta.get("checkpoint")
        if isinstance(checkpoint, Mapping) and checkpoint.get("fingerprint"):
            return str(checkpoint["fingerprint"])
        for record in self.records.values():
            if record.get("checkpoint"):
                return str(record["checkpoint"])
        return None

    @property
    def params(self) -> int | None:
        """Parameter count of the model, from any record that loaded it."""
        for record in self.records.values():
            if isinstance(record.get("params"), int):
                return int(record["params"])
        return None

    @property
    def environment(self) -> dict[str, Any]:
        """The first environment that wrote records (the one a run started in)."""
        envs = environments(self.meta)
        return dict(envs[0]) if envs and isinstance(envs[0], Mapping) else {}


def model_key(model: str | None) -> str | None:
    """A preset name as is; a checkpoint path by its last part without a cache hash ("name-<16 hex>")."""
    if model is None:
        return None
    name = (
        model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
        if ("/" in model or "\\" in model)
        else model
    )
    return re.sub(r"-[0-9a-f]{16}$", "", name).lower()


def _gpu_names(env: Mapping[str, Any]) -> str:
    detail = env.get("gpus_detail") or (env.get("host") or {}).get("gpus") or []
    names = [str(g.get("name")) for g in detail if isinstance(g, Mapping) and g.get("name")]
    return ", ".join(names) if names else "none (CPU)"


def _env_fields(run: RunData) -> dict[str, Any]:
    env = run.environment
    host: Mapping[str, Any] = env["host"] if isinstance(env.get("host"), Mapping) else {}
    spec: Mapping[str, Any] = run.meta["spec"] if isinstance(run.meta.get("spec"), Mapping) else {}
    envs = environments(run.meta)
    cpu = env.get("cpu_model")
    if cpu and env.get("cpu_cores_logical"):
        cpu = f"{cpu} ({env['cpu_cores_logical']} threads)"
    return {
        "GPU": _gpu_names(env),
        "driver": env.get("driver_version"),
        "CUDA (driver)": env.get("cuda_driver_version"),
        "CUDA (torch)": env.get("torch_cuda_version"),
        "torch": env.get("torch_version"),
        "transformers": env.get("transformers_version"),
        "bitsandbytes": host.get("bitsandbytes_version", env.get("bitsandbytes_version")),
        "bitsandbytes backend": env.get("bitsandbytes_backend"),
        "peft": env.get("peft_version"),
        "accelerate": env.get("accelerate_version"),
        "flash-attn": env.get("flash_attn_version", host.get("flash_attn_version")),
        "kernels (hub)": host.get("kernels_version"),
        "hub kernels cached": ", ".join(host.get("hub_kernels") or ()) or None,
        "loadbench": env.get("loadbench_version"),
        "python": env.get("python_version"),
        "CPU": cpu,
        "threads per cell": spec.get("threads"),
        "torch threads (host)": env.get("torch_num_threads"),
        "isolation": run.meta.get("isolation"),
        "environments in run": len(envs) if len(envs) > 1 else None,  # resumed or merged elsewhere
    }


def env_differences(base: RunData, new: RunData) -> list[tuple[str, Any, Any]]:
    """(field, BASE, NEW) for every environment field the two runs disagree on."""
    b, n = _env_fields(base), _env_fields(new)
    return [(key, b[key], n[key]) for key in b if b[key] != n[key]]


def state_notes(base: RunData, new: RunData) -> list[str]:
    """GPU throttling after a run: timings of that run may be low for reasons outside the code."""
    notes = []
    for run, name in ((base, "BASE"), (new, "NEW")):
        states = run.meta.get("gpu_state_after")
        if not isinstance(states, Mapping):
            continue
        for lane, state in states.items():
            text = state.get("throttle_reasons_text") if isinstance(state, Mapping) else None
            if text and text not in ("none", "GpuIdle"):
                notes.append(f"{name}: GPU {lane} reported clock throttling after the run ({text}).")
    return notes
