"""The on-the-fly quantizers beside bitsandbytes (torchao, HQQ, quanto, FineGrainedFP8): the vocabulary,
what a host needs for each (with the fix), the storage the estimate predicts, library refusals, the train
guards. Runs of each value are in test_quantization_run.py (slow)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest

from bench.commands.plan import QUANT_HELP
from bench.errors import SpecError
from bench.plan.estimate.arch import arch_from_config
from bench.plan.estimate.terms import weight_bytes
from bench.plan.matrix import MatrixSpec
from bench.plan.rules import expand
from bench.plan.spec import QUANT_VARIANTS
from loader import LoadConfig, LoadConfigError
from loader.host import GpuInfo, HostCapabilities, probe_host, quant_library_versions
from loader.quantization import METHODS, QUANT_EXTRA, quantization_unsupported_reason

ALL_LIBS = (("hqq", "0.2.8"), ("optimum-quanto", "0.2.7"), ("torchao", "0.18.0"))
CPU = HostCapabilities(bitsandbytes_version="0.50", bitsandbytes_devices=("cpu",), quant_libraries=ALL_LIBS)


def _gpu(cc: tuple[int, int], libs=ALL_LIBS) -> HostCapabilities:
    gpu = GpuInfo("Test GPU", 24 << 30, cc, cc >= (8, 0))
    return HostCapabilities(
        gpus=(gpu,), bitsandbytes_version="0.50", bitsandbytes_devices=("cuda", "cpu"), quant_libraries=libs
    )


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs = {
    d: pytest.mark.skipif(not _installed(d), reason=f"{d} is not installed ({QUANT_EXTRA})")
    for d in ("torchao", "hqq", "optimum-quanto")
}


# -- vocabulary and validation ----------------------------------------------------------------------


def test_every_method_is_one_matrix_value_and_the_cli_help_lists_every_value() -> None:
    for name in METHODS:
        assert QUANT_VARIANTS[name] == {"quantization": name}
    bare = re.sub(r"\([^)]*\)", "", QUANT_HELP.removeprefix("comma list: "))
    listed = {v.strip() for v in re.split(r"[;,]", bare)}
    assert listed == set(QUANT_VARIANTS)


def test_a_bad_quant_value_is_one_sentence_naming_the_field_and_the_allowed_values() -> None:
    with pytest.raises(SpecError) as spec_err:
        MatrixSpec(quant=("none", "torchao-int3"))
    text = str(spec_err.value)
    assert "quant" in text and "'torchao-int3'" in text and "torchao-int8" in text and "hqq-4bit" in text
    assert text.count(".") >= 1 and "\n" not in text
    with pytest.raises(LoadConfigError) as load_err:
        LoadConfig("some/model", quantization="hqq-3bit")
    text = str(load_err.value)
    assert text.startswith("quantization='hqq-3bit' is not allowed; use one of:")
    assert all(repr(m) in text for m in METHODS)


# -- what a host needs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(m for m in METHODS if METHODS[m].library))
def test_a_missing_library_is_skipped_with_the_extra_to_install(name: str) -> None:
    host = HostCapabilities(
        bitsandbytes_version="0.50", bitsandbytes_devices=("cpu",)
    )  # probe: none installed
    reason = quantization_unsupported_reason(name, host, "bfloat16")
    assert reason is not None
    assert f"needs {METHODS[name].library}, which is not installed here" in reason
    assert QUANT_EXTRA in reason


def test_the_plan_skips_a_cell_whose_library_is_missing_with_the_rule_and_the_fix(tiny_llama: Path) -> None:
    spec = MatrixSpec(model=str(tiny_llama), quant=("none", "quanto-int8"), workloads=("prefill",))
    host = HostCapabilities(bitsandbytes_version="0.50", bitsandbytes_devices=("cpu",))
    cells = {c.quant: c for c in expand(spec, tiny_llama, "fp", host)}
    assert cells["none"].skip_reason is None
    reason = cells["quanto-int8"].skip_reason
    assert (
        reason.startswith("rule host: quantization='quanto-int8' needs optimum-quanto")
        and QUANT_EXTRA in reason
    )


def test_the_real_probe_reports_the_installed_libraries_and_the_plan_follows_it(tiny_llama: Path) -> None:
    """The real path: this host's package metadata decides, whichever way it is installed."""
    host = probe_host(bitsandbytes=("0.50", None, ("cpu",)))
    libs = dict(host.quant_libraries)
    assert libs == dict(quant_library_versions())
    spec = MatrixSpec(
        model=str(tiny_llama), quant=("torchao-int8", "hqq-4bit", "quanto-int8"), workloads=("prefill",)
    )
    for cell in expand(spec, tiny_llama, "fp", host):
        dist = METHODS[cell.quant].library
        if _installed(dist):
            assert libs[dist] == importlib.metadata.version(dist)
            assert cell.skip_reason is None, cell.skip_reason
        else:
            assert dist not in libs and QUANT_EXTRA in cell.skip_reason


@pytest.mark.parametrize("name", ["torchao-int4", "torchao-float8", "fp8"])
def test_gpu_only_values_are_skipped_on_this_cpu_host_with_the_gpu_they_need(
    name: str, tiny_llama: Path
) -> None:
    spec = MatrixSpec(model=str(tiny_llama), quant=(name,), workloads=("prefill",))
    (cell,) = expand(spec, tiny_llama, "fp", CPU)
    cc = ".".join(map(str, METHODS[name].min_cc))
    assert cell.skip_reason.startswith(
        f"rule host: quantization={name!r} needs a CUDA GPU of compute capability {cc}+"
    )
    assert cell.skip_reason.endswith("this host has none.")


def test_a_gpu_below_the_compute_capability_is_named_and_one_at_it_runs() -> None:
    assert quantization_unsupported_reason("fp8", _gpu((8, 6)), "bfloat16").endswith("Test GPU has 8.6.")
    assert quantization_unsupported_reason("torchao-float8", _gpu((8, 0)), "bfloat16").endswith("has 8.0.")
    for name in ("fp8", "torchao-float8", "torchao-int4"):
        assert quantization_unsupported_reason(name, _gpu((9, 0)), "bfloat16") is None
    # FP8 needs no extra library: transformers has it built in
    assert quantization_unsupported_reason("fp8", _gpu((9, 0), libs=()), "bfloat16") is None


def test_torchao_int4_needs_bfloat16_and_cannot_train_lora(tiny_llama: Path) -> None:
    reason = quantization_unsupported_reason("torchao-int4", _gpu((9, 0)), "float16")
    assert reason and "needs dtype bfloat16" in reason and "this cell has float16" in reason
    spec = MatrixSpec(
        model=str(tiny_llama),
        dtype=("bfloat16",),
        quant=("torchao-int4", "torchao-int8"),
        workloads=("prefill", "train"),
    )
    cells = {c.quant: c for c in expand(spec, tiny_llama, "fp", _gpu((9, 0)))}
    assert cells["torchao-int4"].skip_reason is None
    (train,) = cells["torchao-int4"].dropped
    assert train[0] == "train" and train[1].startswith(
        "rule quant-lora: quantization='torchao-int4' cannot train"
    )
    assert cells["torchao-int8"].dropped == ()


# -- the memory estimate -------------------------------------------------------------------------------


def _tiny_arch(tiny_llama: Path):
    import json

    return arch_from_config(json.loads((tiny_llama / "config.json").read_text()))


def test_estimated_weights_follow_each_layout(tiny_llama: Path) -> None:
    """The layouts' consequences on tiny-llama (hidden 64, intermediate 256): torchao's int4 leaves a layer
    whose input is not a multiple of 128 unquantized, so only down_proj is int4; 4-bit beats 8-bit."""
    arch = _tiny_arch(tiny_llama)
    full = weight_bytes(arch, "bfloat16", "none")
    for name in METHODS:
        assert weight_bytes(arch, "bfloat16", name) < full
    assert weight_bytes(arch, "bfloat16", "quanto-int4") < weight_bytes(arch, "bfloat16", "quanto-int8")
    assert weight_bytes(arch, "bfloat16", "hqq-4bit") < weight_bytes(arch, "bfloat16", "hqq-8bit")
    int4 = METHODS["torchao-int4"]
    assert int4.linear_bytes(64, 256, 2) == 64 * 256 * 2  # ragged: unquantized
    assert int4.linear_bytes(256, 64, 2) == 256 * 64 // 2 + 64 * 2 * 4  # int4 + bf16 scale/zero per 128
    fp8 = METHODS["fp8"]
    assert fp8.linear_bytes(256, 300, 2) == 256 * 300 + 3 * 2 * 4  # float8 + a float32 per 128×128 tile


def _loaded_storage(tiny_llama: Path, quant: str, dtype: str) -> int:
    from bench.measure.cell import storage_bytes
    from loader import get_model

    model = get_model(LoadConfig(str(tiny_llama), dtype=dtype, quantization=quant, device="cpu"))
    return storage_bytes(model)


@pytest.mark.parametrize(
    "quant",
    [
        pytest.param("torchao-int8", marks=needs["torchao"]),
        pytest.param("quanto-int8", marks=needs["optimum-quanto"]),
        pytest.param("quanto-int4", marks=needs["optimum-quanto"]),
    ],
)
def test_estimated_weight_bytes_equal_what_the_library_stores(tiny_llama: Path, quant: str) -> None:
    """bytes per weight, scales and zero points: the estimate against the loaded model's own tensors."""
    arch = _tiny_arch(tiny_llama)
    for dtype in ("bfloat16", "float32"):
        assert weight_bytes(arch, dtype, quant) == _loaded_storage(tiny_llama, quant, dtype)


# -- what the library refuses, and the train guards ------------------------------------------------------


@needs["hqq"]
def test_a_load_the_quantizer_refuses_is_unsupported_with_its_message(tiny_llama: Path) -> None:
    from bench.measure.cell import classify
    from loader import get_model
    from loader.errors import QuantizationRefused

    config = LoadConfig(str(tiny_llama), dtype="bfloat16", quantization="hqq-4bit", device="cpu")
    with pytest.raises(QuantizationRefused) as err:
        get_model(config)
    assert str(err.value).startswith("transformers refused quantization='hqq-4bit': ")
    assert "device_map that contains a CPU" in str(err.value)  # transformers' HQQ quantizer's own words
    outcome = classify(err.value)
    assert outcome.status == "unsupported" and outcome.reason == str(err.value)


@needs["optimum-quanto"]
def test_quanto_trains_lora_and_a_base_layer_that_stops_gradients_is_invalid(tiny_llama: Path) -> None:
    """quanto refuses peft's float32 upcast, so its adapters attach without it and still get gradients
    after a no-grad eval forward; a base layer that returns an output with no autograd history (what an
    inference-only kernel does) makes the step invalid."""
    import torch

    from bench.measure.probes import Budget
    from bench.measure.workloads import InvalidMeasurement, Workload, attach_lora, make_inputs, train
    from loader import get_model

    config = LoadConfig(str(tiny_llama), dtype="bfloat16", quantization="quanto-int8", device="cpu")
    model = get_model(config)
    ids = make_inputs(model.config.vocab_size, 1, 16, "cpu")
    model.eval()
    with torch.no_grad():
        model(ids)
    peft_model = attach_lora(model, False, kbit=True, quantization="quanto-int8")
    budget = Budget(min_n=2, max_n=2, seconds=0.0, warmup=1, min_seconds=0.0, blocks=1)
    work = Workload(peft_model, ids, 2, budget, lambda: None)
    out = train(work)
    assert out["train.tokens_per_s"] > 0
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.requires_grad for p in lora_b)

    layer = peft_model.base_model.model.model.layers[1].mlp.down_proj.base_layer
    forward = layer.forward
    layer.forward = lambda x: forward(x).detach()  # an inference-only kernel
    with pytest.raises(InvalidMeasurement, match=r"gradients stop at .*layers\.1\.mlp\.down_proj"):
        train(Workload(peft_model, ids, 2, budget, lambda: None))


def test_the_template_preloads_the_libraries_only_for_runs_that_use_them() -> None:
    from bench.run.node import (
        BASE_TEMPLATE_MODULES,
        QUANT_TEMPLATE_MODULES,
        TEMPLATE_MODULES,
        template_modules,
    )

    assert template_modules(("none",)) == BASE_TEMPLATE_MODULES
    assert template_modules(("none", "nf4")) == TEMPLATE_MODULES
    assert template_modules(("none", "quanto-int8")) == QUANT_TEMPLATE_MODULES
    assert "bench.run.template.quant" in QUANT_TEMPLATE_MODULES
    assert importlib.util.find_spec("bench.run.template.quant") is not None


def test_env_lists_every_quantization_value_with_its_reason() -> None:
    from bench.plan.capabilities import probe_cached
    from bench.plan.host_facts import knob_support

    caps = probe_cached()
    rows = {r["value"]: r for r in knob_support(caps) if r["knob"] == "quantization"}
    assert set(METHODS) <= set(rows)
    for name, method in METHODS.items():
        assert rows[name]["reason"] == quantization_unsupported_reason(name, caps.host, "bfloat16")
        if method.min_cc and not caps.host.cuda:
            assert not rows[name]["ok"] and "CUDA GPU of compute capability" in rows[name]["reason"]


def _saved_bytes(tiny_llama: Path, quant: str, tokens: int) -> int:
    """Bytes autograd saves in one LoRA training forward (saved-tensor hooks, unique storages, weights
    and the tensors inside a torchao / quanto weight excluded)."""
    import torch
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    from bench.measure.workloads import attach_lora
    from loader import get_model

    def leaves(t: torch.Tensor) -> list[torch.Tensor]:
        if is_traceable_wrapper_subclass(t):
            return [x for name in t.__tensor_flatten__()[0] for x in leaves(getattr(t, name))]
        return [t]

    config = LoadConfig(str(tiny_llama), dtype="bfloat16", quantization=quant, device="cpu")
    model = attach_lora(get_model(config, training=True), False, kbit=quant != "none", quantization=quant)
    model.train()
    weights = {x.untyped_storage().data_ptr() for p in model.parameters() for x in leaves(p)}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        for x in leaves(t):
            if x.untyped_storage().data_ptr() not in weights:
                seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 2000, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, use_cache=False)
    return sum(seen.values())


@pytest.mark.parametrize(
    "quant",
    [
        pytest.param("torchao-int8", marks=needs["torchao"]),
        pytest.param("quanto-int8", marks=needs["optimum-quanto"]),
    ],
)
def test_what_a_quantized_linear_keeps_for_backward_is_in_the_estimate(tiny_llama: Path, quant: str) -> None:
    """Beside an unquantized bfloat16 LoRA model: torchao's linears keep their dequantized weight (a constant),
    quanto's their input (per token). The estimate's extra term against the measured extra."""
    from bench.plan.estimate.terms import int8_kept_per_token_layer

    arch = _tiny_arch(tiny_llama)
    tokens = 256
    extra = _saved_bytes(tiny_llama, quant, tokens) - _saved_bytes(tiny_llama, "none", tokens)
    if METHODS[quant].autograd_keeps == "weights":
        predicted = arch.linear_params * 2
    else:
        predicted = int8_kept_per_token_layer(arch, 2) * tokens * arch.layers
    assert predicted == pytest.approx(extra, rel=0.07), (predicted, extra)


@pytest.mark.parametrize(
    "quant",
    [
        "none",
        pytest.param("torchao-int8", marks=needs["torchao"]),
        pytest.param("quanto-int8", marks=needs["optimum-quanto"]),
    ],
)
def test_saved_activations_per_token_of_half_precision_lora_match_the_estimate(
    tiny_llama: Path, quant: str
) -> None:
    """bfloat16 LoRA without peft's float32 upcast: the float32 copies each adapter saves of its input,
    not the frozen linears' inputs (per token: the slope between two lengths, so torchao's constant
    dequantized weights drop out)."""
    from bench.plan.estimate.terms import attention_backend, int8_kept_per_token_layer, saved_per_token_layer

    arch = _tiny_arch(tiny_llama)
    per_token = (_saved_bytes(tiny_llama, quant, 256) - _saved_bytes(tiny_llama, quant, 64)) / 192
    layer = saved_per_token_layer(
        arch, a=2, backend=attention_backend("sdpa", "cpu", 2, arch), ctx=256, lora=True
    )
    if quant != "none" and METHODS[quant].autograd_keeps == "inputs":
        layer += int8_kept_per_token_layer(arch, 2)
    predicted = layer * arch.layers + 4 * arch.hidden  # + the final norm's float32 input
    assert predicted == pytest.approx(per_token, rel=0.05), (predicted, per_token)
