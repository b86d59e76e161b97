"""--find-max and train_mode: the search's logic, the cells and rules, and (slow) real runs under RLIMIT_DATA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.errors import SpecError
from bench.measure.findmax import estimate_answer, search
from bench.plan.matrix import MatrixSpec
from bench.plan.planning import make_plan
from loader.host import HostCapabilities


@given(
    truth=st.integers(0, 300),
    seed=st.integers(1, 400),
    cap=st.integers(1, 256),
    unit=st.sampled_from([1, 4, 64]),
    blind=st.booleans(),
)
def test_search_finds_the_largest_fitting_multiple(
    truth: int, seed: int, cap: int, unit: int, blind: bool
) -> None:
    fits = lambda v: v <= truth  # noqa: E731  (memory grows with the shape: one threshold)
    found = search(fits, seed, cap, unit, blind=blind, limit=64)
    top = max(unit, cap // unit * unit)
    expected = min(truth // unit * unit, top)
    assert found.converged
    assert found.answer == expected
    assert found.at_least == (expected == top and truth >= top)
    assert all(ok == (v <= truth) for v, ok in found.trials)
    assert len({v for v, _ in found.trials}) == len(found.trials), "a probe was repeated"


def test_a_good_seed_needs_fewer_probes_than_doubling() -> None:
    fits = lambda v: v <= 45  # noqa: E731
    seeded = search(fits, 42, 256)
    blind = search(fits, 1, 256, blind=True)
    assert seeded.answer == blind.answer == 45
    assert len(seeded.trials) <= 5 < len(blind.trials)


def test_estimate_answer_is_the_largest_predicted_fit() -> None:
    predicted = lambda v: 100 + 10 * v  # noqa: E731
    assert estimate_answer(predicted, 1000, 256) == 90
    assert estimate_answer(predicted, 1000, 50) == 50
    assert estimate_answer(predicted, 50, 256) == 0
    assert estimate_answer(lambda v: v * 3, 64 * 3 * 5 + 10, 4096, 64) == 320


def test_train_mode_cells_rules_and_ids(tiny_llama: Path) -> None:
    caps = HostCapabilities()
    base = MatrixSpec(model=str(tiny_llama), quant=("none", "nf4"), workloads=("train",))
    both = base.with_overrides(train_mode="full,lora")
    plain = {c.label: c for c in make_plan(base, caps).cells}
    cells = {c.label: c for c in make_plan(both, caps).cells}
    assert set(cells) == {
        "bfloat16/none/sdpa/no-ckpt/cache-auto",
        "bfloat16/none/sdpa/no-ckpt/cache-auto/lora",
        "bfloat16/nf4/sdpa/no-ckpt/cache-auto/full",
        "bfloat16/nf4/sdpa/no-ckpt/cache-auto",
    }
    assert "rule kbit-trains-lora" in (cells["bfloat16/nf4/sdpa/no-ckpt/cache-auto/full"].skip_reason or "")
    # cells that train by their quantization's default keep the ids they had before train_mode existed
    for label, cell in plain.items():
        assert cells[label].cell_id == cell.cell_id
    assert (
        base.spec_hash()
        == MatrixSpec(model=str(tiny_llama), quant=("none", "nf4"), workloads=("train",)).spec_hash()
    )
    assert cells["bfloat16/none/sdpa/no-ckpt/cache-auto/lora"].knobs()["train_mode"] == "lora"


def test_find_max_spec_is_checked_and_needs_a_budget_without_gpu(tiny_llama: Path) -> None:
    with pytest.raises(SpecError, match=r"find_max='width'.*'batch', 'seq'"):
        MatrixSpec(find_max="width")
    with pytest.raises(SpecError, match=r"train_mode='half'"):
        MatrixSpec(train_mode=("half",))
    with pytest.raises(SpecError, match="at_max needs find_max"):
        MatrixSpec(at_max=True)
    spec = MatrixSpec(model=str(tiny_llama), workloads=("train",), find_max="batch")
    (cell,) = make_plan(spec, HostCapabilities()).cells
    assert "rule find-max-needs-budget" in (cell.skip_reason or "")
    (limited,) = make_plan(spec.with_overrides(vram_limit_bytes=2 << 30), HostCapabilities()).cells
    assert limited.skip_reason is None and limited.find_max["target"] == "batch"


def _records(directory: Path) -> dict[str, dict]:
    out = {}
    for line in (directory / "records.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["label"]] = record
    return out


@pytest.mark.slow
def test_train_mode_lora_trains_far_fewer_parameters(tiny_llama: Path, tmp_path: Path) -> None:
    from bench.run.session import RunRequest, run_stage

    spec = MatrixSpec(
        model=str(tiny_llama), quant=("none", "nf4"), workloads=("train",), train_mode=("full", "lora")
    )
    out = run_stage(
        RunRequest(spec=spec, out=tmp_path / "run", budget_s=0.2, min_samples=2, live=False)
    ).directory
    records = _records(out)
    statuses = sorted(r["status"] for r in records.values())
    assert statuses == ["ok", "ok", "ok", "skipped"]
    full = records["bfloat16/none/sdpa/no-ckpt/cache-auto"]
    lora = records["bfloat16/none/sdpa/no-ckpt/cache-auto/lora"]
    qlora = records["bfloat16/nf4/sdpa/no-ckpt/cache-auto"]
    assert full["train_mode"] == "full" and lora["train_mode"] == qlora["train_mode"] == "lora"
    assert full["train.trainable_params"] == full["params"]
    assert lora["train.trainable_params"] == qlora["train.trainable_params"]  # one LoRA setting everywhere
    assert lora["train.trainable_params"] * 10 < full["train.trainable_params"]


@pytest.mark.slow
def test_find_max_batch_under_rlimit(tiny_llama: Path, tmp_path: Path) -> None:
    from bench.run.session import RunRequest, run_stage

    spec = MatrixSpec(
        model=str(tiny_llama),
        dtype=("float32",),  # bf16 matmuls are several times slower on most CPUs
        workloads=("train",),
        grad_ckpt=(False, True),
        find_max="batch",
        max_batch=64,
        vram_limit_bytes=1 << 30,
    ).with_overrides(seq=256)
    out = run_stage(
        RunRequest(spec=spec, out=tmp_path / "run", budget_s=0.2, min_samples=2, live=False)
    ).directory
    records = _records(out)
    off = records["float32/none/sdpa/no-ckpt/cache-auto"]
    on = records["float32/none/sdpa/ckpt/cache-auto"]
    for r in (off, on):
        assert r["status"] == "ok", r.get("reason")
        assert r["max.probes"] <= 10 and r["max.estimate"] is not None
        assert r["max.batch"] >= 1 and r["max.peak_bytes"] <= 1 << 30
        assert len(r["max.trials"].split()) == r["max.probes"]
    assert on["max.batch"] >= off["max.batch"]
