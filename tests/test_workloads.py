"""Workloads and their guards, for real on tiny checkpoints (CPU)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bench.measure.cell import run_cell
from bench.measure.outcome import CellEvent, PhaseStarted, WindowMeasured
from bench.measure.probes import Budget
from bench.measure.workloads import (
    InvalidMeasurement,
    Workload,
    attach_lora,
    decode,
    first_forward,
    make_inputs,
    prefill,
    repacked_for_cpu,
    train,
)
from bench.plan.matrix import Cell, Shape
from loader import LoadConfig, get_model

FIXED = Budget(min_n=5, max_n=5, seconds=0.0, warmup=1)


def workload(model, batch=2, seq=16, new_tokens=4, budget=FIXED) -> Workload:
    ids = make_inputs(min(1000, model.config.vocab_size), batch, seq, "cpu")
    return Workload(model, ids, new_tokens, budget, lambda: None, pad_token_id=0)


@pytest.fixture
def model(tiny_llama):
    return get_model(LoadConfig(str(tiny_llama), dtype="float32", attn_implementation="sdpa"))


# -- correctness anchors (what optimum-benchmark 0.6 got wrong) --------------------------------------


def test_decode_state_is_reset_per_call(model) -> None:
    w = workload(model)
    first = decode(w, use_cache=True)
    second = decode(w, use_cache=True)
    assert first["decode.ttft_s.n"] == second["decode.ttft_s.n"] == 5  # no samples carried over
    assert first["decode.tokens_per_s.n"] == second["decode.tokens_per_s.n"] == 5
    assert len(second["decode.tpot_s.samples"]) == 5
    # every decode series says how it was sampled, as the generations it came from were
    for metric in ("decode.ttft_s", "decode.tpot_s", "decode.tokens_per_s"):
        assert second[f"{metric}.stop"] == "fixed" and second[f"{metric}.blocks"] >= 1, metric
    assert first["decode.use_cache"] is True


def test_train_throughput_is_tokens_over_the_time_of_those_tokens(model) -> None:
    w = workload(model)
    out = train(w)
    tokens = w.input_ids.numel()
    assert out["train.step_s.n"] == 5
    # n is odd, so the median rate is exactly the rate of the median step; no factor of the step count
    assert out["train.tokens_per_s"] == pytest.approx(tokens / out["train.step_s"], rel=1e-12)
    for rate, step in zip(out["train.tokens_per_s.samples"], out["train.step_s.samples"], strict=True):
        assert rate == pytest.approx(tokens / step)


def test_prefill_throughput_pairs_with_its_latency(model) -> None:
    w = workload(model)
    out = prefill(w)
    assert out["prefill.tokens_per_s"] == pytest.approx(w.tokens / out["prefill.latency_s"], rel=1e-12)
    assert w.windows and w.windows[0]["tokens"] == w.tokens * out["prefill.latency_s.n"]


def test_decode_counts_exactly_the_tokens_asked(model) -> None:
    out = decode(workload(model, new_tokens=6), use_cache=False)
    assert out["decode.use_cache"] is False
    assert out["decode.tpot_s"] > 0 and out["decode.ttft_s"] > 0
    batch_tokens = 2 * 6
    assert (
        out["decode.tokens_per_s"] < batch_tokens / out["decode.ttft_s"] * 6
    )  # sanity: same tokens, same time


# -- guards, each triggered for real --------------------------------------------------------------


def test_guard_non_finite_loss(model) -> None:
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(InvalidMeasurement, match="the training loss is not finite"):
        train(workload(model))


def test_guard_nan_outputs(model) -> None:
    with torch.no_grad():
        model.model.norm.weight.fill_(float("inf"))
    with pytest.raises(InvalidMeasurement, match="the first forward's logits contains NaN or Inf"):
        first_forward(workload(model))


def test_guard_trainable_parameter_without_gradient(model) -> None:
    model.register_parameter("unused_adapter", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(
        InvalidMeasurement, match=r"1 trainable parameter\(s\) got no gradient .*unused_adapter"
    ):
        train(workload(model))


def test_guard_wrong_generated_token_count(tiny_llama, tmp_path) -> None:
    """A checkpoint whose generation_config sets max_time makes generate stop early."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_llama, ckpt)
    gen = ckpt / "generation_config.json"
    data = json.loads(gen.read_text()) if gen.exists() else {}
    data["max_time"] = 1e-9
    gen.write_text(json.dumps(data))
    model = get_model(LoadConfig(str(ckpt), dtype="float32"))
    with pytest.raises(InvalidMeasurement, match=r"generate produced \d+ new tokens per sequence, not 8"):
        decode(workload(model, new_tokens=8), use_cache=True)


def _has_avx512_bf16() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


@pytest.mark.skipif(
    not _has_avx512_bf16(), reason="bitsandbytes repacks 4-bit weights only on CPUs with AVX512-BF16"
)
def test_guard_catches_the_bitsandbytes_repack_trap(tiny_llama) -> None:
    """A no-grad eval forward repacks Linear4bit weights; LoRA training after it loses gradients."""
    model = get_model(LoadConfig(str(tiny_llama), dtype="bfloat16", quantization="bnb-4bit"))
    w = workload(model)
    prefill(w)
    assert repacked_for_cpu(model)
    w.model = attach_lora(model, gradient_checkpointing=False)
    with pytest.raises(InvalidMeasurement, match="bitsandbytes repacked the 4-bit weights for CPU inference"):
        train(w)


@pytest.mark.skipif(
    not _has_avx512_bf16(), reason="bitsandbytes repacks 4-bit weights only on CPUs with AVX512-BF16"
)
def test_guard_catches_backward_through_an_op_without_autograd(tiny_llama) -> None:
    """Even without the repack check, the backward through the repacked kernel is refused."""
    model = get_model(LoadConfig(str(tiny_llama), dtype="bfloat16", quantization="bnb-4bit"))
    w = workload(model)
    prefill(w)
    model = attach_lora(model, gradient_checkpointing=False)
    model.train()
    ids = w.input_ids
    with pytest.raises(
        InvalidMeasurement, match=r"backward ran through bitsandbytes::\w+, which has no autograd kernel"
    ):
        from bench.measure.workloads import backward_checked

        backward_checked(model(ids, labels=ids).loss)


def test_worker_trains_4bit_on_a_fresh_model_after_eval_phases(tiny_llama) -> None:
    cell = Cell(
        "tiny-llama",
        "fp",
        "bfloat16",
        "nf4",
        "sdpa",
        False,
        "auto",
        ("prefill", "decode", "train"),
        Shape(2, 16, 4),
        1,
    )
    sent: list[CellEvent] = []
    out = run_cell(cell, tiny_llama, Budget(min_n=5, max_n=5, seconds=0), sent.append)
    assert out["train.tokens_per_s"] > 0 and out["train.trainable_params"] > 0
    assert out.get("train.fresh_model") is (True if _has_avx512_bf16() else None)
    # the repeated loads come after the workloads, in a second "load" phase
    assert [m.phase for m in sent if isinstance(m, PhaseStarted)] == [
        "load",
        "prefill",
        "decode",
        "train",
        "load",
    ]
    assert {m.phase for m in sent if isinstance(m, WindowMeasured)} == {"prefill", "decode", "train"}


def test_worker_records_threads_read_back_and_load_split(tiny_llama) -> None:
    cell = Cell(
        "tiny-llama", "fp", "float32", "none", "eager", False, "auto", ("prefill",), Shape(1, 8, 2), 1
    )
    out = run_cell(cell, tiny_llama, Budget(min_n=5, max_n=5, seconds=0), lambda event: None)
    assert out["threads"] == torch.get_num_threads() == 1
    for key in (
        "load.tokenizer_s",
        "load.config_s",
        "load.model_s",
        "load.first_forward_s",
        "load.read_floor_s",
    ):
        assert out[key] > 0, key
    assert out["load.model_over_floor"] == pytest.approx(out["load.model_s"] / out["load.read_floor_s"])
    # load.model_s is sampled like every timed metric; the first load is kept apart, not a sample
    assert out["load.model_s.n"] == 5 == len(out["load.model_s.samples"])
    assert out["load.model_s.stop"] == "fixed"
    assert out["load.model_first_s"] > 0 and out["load.model_first_s"] not in out["load.model_s.samples"]
    assert out["load.model_s.ci_low"] <= out["load.model_s"] <= out["load.model_s.ci_high"]
    assert out["load.page_cache"] == "warm"
    weights = sum(p.stat().st_size for p in tiny_llama.glob("*.safetensors"))
    assert 0 < out["load.read_floor_bytes"] <= weights


def test_repeated_loads_free_the_previous_model_before_timing_the_next() -> None:
    import weakref

    from bench.measure.cell import sample_loads

    class Model:
        def __init__(self) -> None:
            self.weights = torch.zeros(1 << 20)
            self.me = self  # a reference cycle, as modules with hooks have: only gc frees it

    alive: list[weakref.ref[Model]] = []
    seen_alive: list[int] = []

    def load() -> Model:
        seen_alive.append(sum(r() is not None for r in alive))
        model = Model()
        alive.append(weakref.ref(model))
        return model

    stats = sample_loads(load, Budget(min_n=6, max_n=6, seconds=0.0, warmup=3), lambda: None)
    assert stats.n == 6 == len(seen_alive)  # no warm-up load: the cell's first load is the warm-up
    assert seen_alive == [0] * 6  # every load started with no earlier model alive
    assert all(r() is None for r in alive)  # and the last one is freed too
