"""Matrix specs, cells, cell ids and the skip rules."""

from __future__ import annotations

import dataclasses

import pytest

from bench.plan.matrix import MatrixSpec, Shape, SpecError, expand, load_preset
from loader import GpuInfo, HostCapabilities

CPU = HostCapabilities(bitsandbytes_version="0.50", bitsandbytes_devices=("cpu",))
H100 = HostCapabilities(
    (GpuInfo("NVIDIA H100", 80 << 30, (9, 0), True),), None, False, "0.50", None, ("cuda", "cpu")
)


def test_default_preset_on_cpu_runs_every_cell(tiny_llama) -> None:
    cells = expand(load_preset("default"), tiny_llama, "fp", CPU)
    assert len(cells) == 2 * 3 * 2 * 2
    assert all(c.skip_reason is None and not c.dropped for c in cells)
    assert len({c.cell_id for c in cells}) == len(cells)


def test_cell_id_is_stable_and_tracks_what_is_measured(tiny_llama) -> None:
    spec = load_preset("default")
    first = [c.cell_id for c in expand(spec, tiny_llama, "fp", CPU)]
    assert first == [c.cell_id for c in expand(spec, tiny_llama, "fp", CPU)]
    assert set(first).isdisjoint(c.cell_id for c in expand(spec, tiny_llama, "other-checkpoint", CPU))
    assert set(first).isdisjoint(
        c.cell_id for c in expand(dataclasses.replace(spec, threads=2), tiny_llama, "fp", CPU)
    )
    bigger = spec.with_overrides(seq=128)
    assert set(first).isdisjoint(c.cell_id for c in expand(bigger, tiny_llama, "fp", CPU))
    assert dataclasses.replace(spec, name="renamed").spec_hash() == spec.spec_hash()


def test_gpu_preset_on_cpu_explains_every_skip(tiny_llama) -> None:
    cells = expand(load_preset("gpu"), tiny_llama, "fp", CPU)
    skipped = [c for c in cells if c.skip_reason]
    assert skipped and all(c.skip_reason.startswith("rule ") for c in skipped)
    fa2 = next(c for c in cells if c.attn == "flash_attention_2")
    assert (
        fa2.skip_reason
        == "rule host: flash_attention_2 needs a CUDA GPU of compute capability 8.0+; this host has none."
    )
    flex_ckpt = next(c for c in cells if c.attn == "flex_attention" and c.grad_ckpt)
    assert "flex_attention has no backward pass on the CPU" in flex_ckpt.skip_reason
    flex = next(c for c in cells if c.attn == "flex_attention" and not c.grad_ckpt)
    assert flex.skip_reason is None
    assert dict(flex.dropped)["train"].startswith("rule host: flex_attention has no backward pass on the CPU")


def test_gpu_preset_on_h100_without_flash_attn(tiny_llama) -> None:
    cells = expand(load_preset("gpu"), tiny_llama, "fp", H100)
    fa2 = next(c for c in cells if c.attn == "flash_attention_2" and c.dtype == "bfloat16")
    assert "needs the flash-attn package, which is not installed" in fa2.skip_reason
    flex = next(c for c in cells if c.attn == "flex_attention" and c.grad_ckpt)
    assert flex.skip_reason is None  # flex trains on CUDA


def test_checkpointing_without_train_is_skipped(tiny_llama) -> None:
    spec = MatrixSpec(grad_ckpt=(False, True), workloads=("prefill",))
    cells = expand(spec, tiny_llama, "fp", CPU)
    assert [c.skip_reason is None for c in cells] == [True, False]
    assert cells[1].skip_reason.startswith("rule checkpointing-needs-train:")


def test_cache_on_with_checkpointing_is_a_loader_rule(tiny_llama) -> None:
    spec = MatrixSpec(grad_ckpt=(True,), use_cache=("on",))
    (cell,) = expand(spec, tiny_llama, "fp", CPU)
    assert cell.skip_reason.startswith(
        "rule loader-config: use_cache=True conflicts with gradient_checkpointing=True"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dtype": ("float64",)}, "dtype='float64' is not allowed; use one or more of: 'auto', 'bfloat16'"),
        ({"quant": ("int4",)}, "quant='int4' is not allowed; use one or more of: 'none', 'nf4'"),
        ({"attn": ("flash",)}, "attn='flash' is not allowed"),
        (
            {"workloads": ("serve",)},
            "workloads='serve' is not allowed; use one or more of: 'prefill', 'train', 'decode'",
        ),
        ({"dtype": ()}, "dtype has no values"),
        ({"shape": Shape(batch=0)}, "shape.batch=0 must be a positive integer"),
    ],
)
def test_bad_axis_values_are_one_sentence(changes, message) -> None:
    with pytest.raises(SpecError) as err:
        MatrixSpec(**changes)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_cli_style_overrides_parse_lists() -> None:
    spec = MatrixSpec().with_overrides(dtype="float32,bfloat16", grad_ckpt="off,on", batch=4, quant=None)
    assert spec.dtype == ("float32", "bfloat16")
    assert spec.grad_ckpt == (False, True)
    assert spec.shape.batch == 4 and spec.quant == ("none",)
    with pytest.raises(SpecError, match="grad_ckpt='maybe' is not allowed"):
        MatrixSpec().with_overrides(grad_ckpt="maybe")


def test_yaml_spec_unknown_key(tmp_path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("model: tiny-llama\ndtypes: [float32]\n")
    with pytest.raises(SpecError, match="spec key 'dtypes' is unknown"):
        MatrixSpec.from_yaml(path)
    path.write_text("model: tiny-llama\ndtype: [float32]\nshape: {batch: 1, seq: 8, new_tokens: 2}\n")
    spec = MatrixSpec.from_yaml(path)
    assert spec.name == "spec" and spec.shape == Shape(1, 8, 2)


def test_recipe_becomes_one_cell_on_its_architecture(recipes_dir) -> None:
    spec = MatrixSpec.from_recipe(recipes_dir / "Qwen2.5-1.5B-Instruct-grpo-config_demo.yaml")
    assert spec.model == "Qwen/Qwen2.5-1.5B-Instruct"  # resolved at plan time (tests/test_models.py)
    assert (spec.dtype, spec.attn, spec.grad_ckpt, spec.quant) == (
        ("bfloat16",),
        ("flash_attention_2",),
        (True,),
        ("none",),
    )
    assert spec.shape.batch == 16 and spec.shape.seq == 1536
    sft = MatrixSpec.from_recipe(recipes_dir / "SmolLM2-1.7B-Instruct-sft-config.yaml")
    assert (sft.model, sft.attn, sft.shape.seq) == ("HuggingFaceTB/SmolLM2-1.7B-Instruct", ("sdpa",), 8192)


def test_unknown_preset() -> None:
    with pytest.raises(SpecError, match="matrix preset 'huge' does not exist; use one of: default, gpu"):
        load_preset("huge")


def test_cell_columns_and_label_keep_the_record_vocabulary(tiny_llama) -> None:
    """A cell's record columns are schema.KNOBS plus checkpoint and workloads; the label is pinned."""
    from bench.errors import SpecError as BenchSpecError
    from bench.plan.matrix import Cell
    from bench.schema import KNOBS, WORKLOADS

    spec = load_preset("default").with_overrides(grad_ckpt="on", use_cache="off", workloads="train")
    (cell, *_) = expand(spec, tiny_llama, "fp", CPU)
    assert set(cell.knobs()) == {*KNOBS, "checkpoint", "workloads"}
    assert cell.label == f"{cell.dtype}/{cell.quant}/{cell.attn}/ckpt/cache-off"
    assert MatrixSpec().workloads == WORKLOADS
    assert SpecError is BenchSpecError
    assert Cell.from_dict(cell.to_dict()) == cell
