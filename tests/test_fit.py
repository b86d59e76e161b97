"""The fit check (bench.plan.fit): a cell predicted not to fit is skipped before it loads, with the numbers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench.measure.outcome import CellOutcome
from bench.plan.estimate import config_for, estimate_cell
from bench.plan.fit import FIT_MARGIN, MemoryBudget, apply_fit_check, available_memory, fit_columns
from bench.plan.matrix import Cell, MatrixSpec, Shape
from bench.plan.planning import make_plan
from bench.run.compose import ModelFacts, compose_record
from bench.schema import FIT_COLUMNS, FIT_VERDICTS
from loader.host import HostCapabilities

GIB = 1 << 30
SMOLLM2 = config_for("smollm2-1.7b")


def _config(name: str) -> dict[str, Any]:
    from bench.plan.checkpoints import load_preset

    return load_preset(name)


def _cell(model: str = "smollm2-1.7b", **changes: Any) -> Cell:
    cell = Cell(
        model,
        "fingerprint",
        "bfloat16",
        "none",
        "sdpa",
        True,
        "auto",
        ("prefill", "train", "decode"),
        Shape(batch=4, seq=8192, new_tokens=16),
        1,
    )
    return dataclasses.replace(cell, **changes)


def _peak(cell: Cell, device: str = "cpu") -> int:
    cols = estimate_cell(cell, _config(cell.model), device)
    return max(v for k, v in cols.items() if k.endswith(".estimate_bytes"))


def test_smollm2_recipe_shape_is_skipped_on_a_24_gib_host() -> None:
    """The issue's case: batch 4 × 8192 bf16 full fine-tune with checkpointing, 24 GiB of RAM."""
    cell = _cell()
    [out] = apply_fit_check([cell], _config("smollm2-1.7b"), MemoryBudget("cpu", 24 * GIB, "available RAM"))
    fit = dict(out.fit)
    assert fit["fit.verdict"] == "exceeds" and fit["fit.predicted_phase"] == "train"
    assert fit["fit.predicted_bytes"] == _peak(cell) > 30 * GIB
    assert out.skip_reason is not None and out.skip_reason.startswith("rule fit: predicted 31.")
    assert "> 24.00 GiB available (available RAM, 10% margin)" in out.skip_reason
    # checkpointing is already on, so it is not offered; the other fixes are
    assert "--grad-ckpt" not in out.skip_reason
    assert "lower --seq or --batch" in out.skip_reason and "--quant nf4" in out.skip_reason
    assert "--no-fit-check" in out.skip_reason
    assert out.cell_id == cell.cell_id  # the check never changes which cell it is


def test_grad_ckpt_is_offered_when_training_without_it() -> None:
    cell = _cell(grad_ckpt=False)
    [out] = apply_fit_check([cell], _config("smollm2-1.7b"), MemoryBudget("cpu", GIB, "test"))
    assert out.skip_reason is not None and "turn on --grad-ckpt" in out.skip_reason


@pytest.mark.parametrize(("ratio", "skipped"), [(0.5, False), (1.0, False), (1.09, False), (1.11, True)])
def test_margin(ratio: float, skipped: bool) -> None:
    """Skipped only when the prediction exceeds the budget by more than FIT_MARGIN."""
    cell = _cell(model="tiny-llama", shape=Shape(2, 64, 8))
    budget = int(_peak(cell) / ratio)
    [out] = apply_fit_check([cell], _config("tiny-llama"), MemoryBudget("cpu", budget, "test"))
    assert (out.skip_reason is not None) is skipped
    assert dict(out.fit)["fit.verdict"] == ("exceeds" if skipped else "fits")
    assert dict(out.fit)["fit.margin"] == FIT_MARGIN


def test_device_decides_the_estimate() -> None:
    """A GPU budget is compared with the CUDA estimate (context included), not the CPU one."""
    cell = _cell(model="tiny-llama", shape=Shape(2, 64, 8))
    cpu = fit_columns(cell, _config("tiny-llama"), MemoryBudget("cpu", GIB, "x"))
    cuda = fit_columns(cell, _config("tiny-llama"), MemoryBudget("cuda", GIB, "x"))
    assert cuda["fit.predicted_bytes"] == _peak(cell, "cuda") > cpu["fit.predicted_bytes"] == _peak(cell)


def test_dropped_workloads_do_not_count() -> None:
    """A workload the host cannot run is not part of the cell's peak."""
    cell = _cell(dropped=(("train", "rule host: no"),))
    cols = fit_columns(cell, _config("smollm2-1.7b"), MemoryBudget("cpu", 24 * GIB, "x"))
    assert cols["fit.predicted_phase"] != "train"
    assert cols["fit.predicted_bytes"] < _peak(cell)


def test_rule_skips_keep_their_reason_and_get_the_prediction() -> None:
    cell = _cell(skip_reason="rule host: flash_attention_2 needs a CUDA GPU")
    [out] = apply_fit_check([cell], _config("smollm2-1.7b"), MemoryBudget("cpu", GIB, "x"))
    assert out.skip_reason == cell.skip_reason
    assert dict(out.fit)["fit.verdict"] == "exceeds"


def test_off_and_unknown() -> None:
    cell = _cell()
    [off] = apply_fit_check([cell], _config("smollm2-1.7b"), None)
    assert off.skip_reason is None and dict(off.fit) == {"fit.verdict": "off", "fit.reason": "--no-fit-check"}
    [unknown] = apply_fit_check([cell], _config("smollm2-1.7b"), MemoryBudget("cuda", None, "no NVML"))
    assert unknown.skip_reason is None
    assert dict(unknown.fit)["fit.verdict"] == "unknown" and dict(unknown.fit)["fit.reason"] == "no NVML"
    # an architecture the estimate cannot model: no prediction, the cell runs, the columns say why
    [odd] = apply_fit_check([cell], {"model_type": "odd"}, MemoryBudget("cpu", GIB, "x"))
    assert odd.skip_reason is None and "cannot model" in dict(odd.fit)["fit.reason"]


def test_columns_are_the_schemas() -> None:
    cols = fit_columns(_cell(), _config("smollm2-1.7b"), MemoryBudget("cpu", GIB, "x"))
    assert tuple(cols) == FIT_COLUMNS
    assert cols["fit.verdict"] in FIT_VERDICTS


def test_the_record_carries_the_prediction() -> None:
    [cell] = apply_fit_check([_cell()], _config("smollm2-1.7b"), MemoryBudget("cpu", 24 * GIB, "RAM"))
    record = compose_record(
        cell, CellOutcome("skipped", cell.skip_reason), model=ModelFacts(_config("smollm2-1.7b"), "cpu")
    )
    assert record["status"] == "skipped" and record["reason"].startswith("rule fit:")
    assert record["fit.predicted_bytes"] == record["mem.train.estimate_bytes"]
    assert record["fit.available_bytes"] == 24 * GIB
    assert Cell.from_dict(cell.to_dict()) == cell  # what a worker and run.json receive


class FakeNvml:
    def __init__(self, free: list[int]) -> None:
        self.free = free

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int:
        return len(self.free)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-{h}"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(free=self.free[h], total=80 * GIB)


def test_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=20 * GIB))
    assert available_memory(False) == MemoryBudget("cpu", 20 * GIB, "available RAM (psutil)")
    assert available_memory(False, 8 * GIB) == MemoryBudget("cpu", 8 * GIB, "--vram-limit")
    assert available_memory(False, 32 * GIB).available_bytes == 20 * GIB  # a limit above RAM is not RAM
    gpus = FakeNvml([70 * GIB, 30 * GIB])
    assert available_memory(True, nvml=gpus) == MemoryBudget("cuda", 30 * GIB, "NVML free memory of GPU 1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert available_memory(True, nvml=gpus).available_bytes == 70 * GIB
    assert available_memory(True, 16 * GIB, nvml=gpus).source == "--vram-limit"

    class Broken(FakeNvml):
        def nvmlInit(self) -> None:
            raise RuntimeError("driver not loaded")

    assert available_memory(True, nvml=Broken([])).available_bytes is None
    assert available_memory(True, 16 * GIB, nvml=Broken([])).available_bytes == 16 * GIB


def test_make_plan_applies_it(tiny_llama: Path) -> None:
    spec = MatrixSpec(model=str(tiny_llama), dtype=("float32", "bfloat16"), shape=Shape(2, 64, 8))
    host = HostCapabilities()
    tight = make_plan(spec, host, budget=MemoryBudget("cpu", 1 << 20, "test"))
    assert not tight.runnable and all(c.skip_reason.startswith("rule fit:") for c in tight.cells)
    assert tight.to_dict()[0]["fit"]["fit.verdict"] == "exceeds"
    roomy = make_plan(spec, host, budget=MemoryBudget("cpu", 64 * GIB, "test"))
    assert len(roomy.runnable) == 2
    off = make_plan(spec, host, fit_check=False, budget=MemoryBudget("cpu", 1 << 20, "test"))
    assert len(off.runnable) == 2
    assert [c.cell_id for c in tight.cells] == [c.cell_id for c in roomy.cells]


def test_a_run_whose_cells_all_skip_starts_nothing(tiny_llama: Path, tmp_path: Path, capsys) -> None:
    """No runnable cell: no worker template, no quality reference; the records carry the prediction."""
    from bench.run.session import RunRequest, run_stage
    from bench.run.store import RunStore

    spec = MatrixSpec(
        model=str(tiny_llama), workloads=("prefill",), shape=Shape(1, 16, 2), vram_limit_bytes=1 << 20
    )
    out = run_stage(RunRequest(spec, out=tmp_path / "run", live=False)).directory
    store = RunStore.open(out)
    [record] = store.records()
    assert record["status"] == "skipped" and record["reason"].startswith("rule fit:")
    assert record["fit.available_source"] == "--vram-limit" and record["fit.available_bytes"] == 1 << 20
    assert record["fit.predicted_bytes"] == max(
        record[f"mem.{p}.estimate_bytes"] for p in ("load", "prefill")
    )
    meta = json.loads((out / "run.json").read_text())
    assert meta["quality_reference"] == {"reason": "no cell of this run needed it (none ran)"}
    assert "template_startup_s" not in meta and "isolation" not in meta
    captured = capsys.readouterr()
    assert "quality reference" not in captured.err
    assert "no cell ran, so no worker was started" in captured.out


@pytest.mark.slow
def test_no_quality(tiny_llama: Path, tmp_path: Path, capsys) -> None:
    """--no-quality: no reference is computed, and every cell's quality columns are null with the reason."""
    from bench.run.node import NO_QUALITY
    from bench.run.session import RunRequest, run_stage
    from bench.run.store import RunStore

    spec = MatrixSpec(model=str(tiny_llama), workloads=("prefill",), shape=Shape(1, 16, 2))
    out = run_stage(RunRequest(spec, out=tmp_path / "run", live=False, quality=False, budget_s=0.1)).directory
    [record] = RunStore.open(out).records()
    assert record["status"] == "ok", record.get("reason")
    assert record["quality.kl"] is None and record["quality.reason"] == NO_QUALITY
    assert json.loads((out / "run.json").read_text())["quality_reference"] == {"reason": NO_QUALITY}
    assert "quality reference" not in capsys.readouterr().err
