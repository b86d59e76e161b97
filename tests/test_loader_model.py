"""get_model / get_tokenizer on real tiny checkpoints (CPU): knobs reach the loaded model."""

from __future__ import annotations

import json
import shutil

import bitsandbytes as bnb
import pytest
import torch
import transformers

from loader import (
    CheckpointInvalid,
    GpuInfo,
    HostCapabilities,
    LoadConfig,
    LoadConfigError,
    ModelLoadError,
    UnsupportedOnHost,
    get_model,
    get_tokenizer,
    probe_host,
)
from loader.model import checkpointing_enabled

CPU = HostCapabilities(bitsandbytes_version="0.50", bitsandbytes_devices=("cpu",))


def gpu_host(cc: tuple[int, int], *, fa2: str | None = "2.8.3", fa3: bool = False) -> HostCapabilities:
    gpu = GpuInfo("Fake GPU", 24 << 30, cc, cc >= (8, 0))
    return HostCapabilities((gpu,), fa2, fa3, "0.50", None, ("cuda", "cpu"))


def linear_types(model) -> set[type]:
    return {type(m) for m in model.model.layers.modules() if "Linear" in type(m).__name__}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_dtype_reaches_parameters(tiny_llama, dtype) -> None:
    model = get_model(LoadConfig(str(tiny_llama), dtype=dtype))
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}


def test_auto_dtype_is_the_checkpoint_dtype(tiny_llama) -> None:
    model = get_model(LoadConfig(str(tiny_llama)))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("attn", ["eager", "sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)])
def test_attention_implementation_is_used(tiny_llama, attn) -> None:
    model = get_model(LoadConfig(str(tiny_llama), attn_implementation=attn))
    assert model.config._attn_implementation == attn
    with torch.no_grad():  # flex_attention has no CPU backward; a forward is what this checks
        out = model(torch.tensor([[1, 2, 3, 4]]))
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize(
    ("knobs", "quant_type", "nested"),
    [
        ({"bnb_4bit_quant_type": "nf4"}, "nf4", False),
        ({"bnb_4bit_quant_type": "fp4"}, "fp4", False),
        ({"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}, "nf4", True),
    ],
)
def test_bnb_4bit_layers(tiny_llama, knobs, quant_type, nested) -> None:
    model = get_model(LoadConfig(str(tiny_llama), quantization="bnb-4bit", **knobs))
    assert linear_types(model) == {bnb.nn.Linear4bit}
    state = model.model.layers[0].mlp.up_proj.weight.quant_state
    assert state.quant_type == quant_type
    assert bool(state.nested) is nested
    assert state.dtype == torch.float32  # compute dtype follows the (auto-resolved) model dtype


def test_bnb_4bit_compute_dtype_and_storage(tiny_llama) -> None:
    cfg = LoadConfig(
        str(tiny_llama), dtype="bfloat16", quantization="bnb-4bit", bnb_4bit_quant_storage="bfloat16"
    )
    layer = get_model(cfg).model.layers[0].mlp.up_proj
    assert layer.compute_dtype == torch.bfloat16
    assert layer.weight.dtype == torch.bfloat16  # quant storage


def test_bnb_8bit_layers(tiny_llama) -> None:
    model = get_model(LoadConfig(str(tiny_llama), quantization="bnb-8bit"))
    assert linear_types(model) == {bnb.nn.Linear8bitLt}
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.int8


def test_gradient_checkpointing_turns_off_cache_and_really_checkpoints(tiny_llama) -> None:
    model = get_model(LoadConfig(str(tiny_llama), gradient_checkpointing=True))
    assert model.config.use_cache is False
    assert checkpointing_enabled(model)
    # Really enabled: the backward pass recomputes the layer (counted on forward itself; torch does
    # not re-run module hooks during the recompute).
    model.train()
    calls = []
    mlp = model.model.layers[0].mlp
    original = mlp.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    mlp.forward = counting_forward
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model(ids, labels=ids).loss.backward()
    assert len(calls) == 2  # forward once, recomputed once in backward


def test_use_cache_on_without_checkpointing(tiny_llama) -> None:
    model = get_model(LoadConfig(str(tiny_llama)))
    assert model.config.use_cache is True
    assert not checkpointing_enabled(model)


def test_chat_template_override_is_used(tiny_llama) -> None:
    template = "{% for m in messages %}<<{{ m['role'] }}|{{ m['content'] }}>>{% endfor %}"
    tok = get_tokenizer(LoadConfig(str(tiny_llama), chat_template=template))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<<user|hi>>"


def test_checkpoint_chat_template_kept_without_override(tiny_llama) -> None:
    tok = get_tokenizer(LoadConfig(str(tiny_llama)), require_chat_template=True)
    assert "hi" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_required_chat_template_absent(tiny_llama, tmp_path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(tiny_llama, bare)
    cfg_file = bare / "tokenizer_config.json"
    data = json.loads(cfg_file.read_text())
    data.pop("chat_template", None)
    cfg_file.write_text(json.dumps(data))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(LoadConfigError, match="has no chat template and chat_template is not set"):
        get_tokenizer(LoadConfig(str(bare)), require_chat_template=True)
    assert get_tokenizer(LoadConfig(str(bare))).chat_template is None


def test_invalid_chat_template(tiny_llama) -> None:
    with pytest.raises(LoadConfigError, match="chat_template is not a valid Jinja template"):
        get_tokenizer(LoadConfig(str(tiny_llama), chat_template="{% for m in messages %}"))


# -- host checks (GPU facts from a constructed capability record; the real probe is tested below) --


@pytest.mark.parametrize(
    ("attn", "caps", "dtype", "expected"),
    [
        (
            "flash_attention_2",
            CPU,
            "bfloat16",
            "flash_attention_2 needs a CUDA GPU of compute capability 8.0+; this host has none.",
        ),
        (
            "flash_attention_2",
            gpu_host((7, 5)),
            "float16",
            "flash_attention_2 needs a CUDA GPU of compute capability 8.0+; Fake GPU is 7.5.",
        ),
        (
            "flash_attention_3",
            gpu_host((8, 0), fa3=True),
            "bfloat16",
            "flash_attention_3 needs a CUDA GPU of compute capability 9.0+; Fake GPU is 8.0.",
        ),
        (
            "flash_attention_2",
            gpu_host((9, 0), fa2=None),
            "bfloat16",
            "flash_attention_2 needs the flash-attn package, which is not installed",
        ),
        ("flash_attention_3", gpu_host((9, 0)), "bfloat16", "flash_attention_3 needs the flash-attn-3"),
        (
            "flash_attention_2",
            gpu_host((9, 0)),
            "float32",
            "flash_attention_2 runs only in float16 or bfloat16",
        ),
    ],
)
def test_flash_attention_refusals(tiny_llama, attn, caps, dtype, expected) -> None:
    with pytest.raises(UnsupportedOnHost) as err:
        get_model(LoadConfig(str(tiny_llama), attn_implementation=attn, dtype=dtype), caps)
    assert str(err.value).startswith(expected)


def test_flash_attention_accepted_on_a_capable_host() -> None:
    from loader import unsupported_reason

    cfg = LoadConfig("m", attn_implementation="flash_attention_2", dtype="bfloat16")
    assert unsupported_reason(cfg, gpu_host((9, 0)), dtype="bfloat16") is None


def test_flex_attention_training_on_cpu_refused(tiny_llama) -> None:
    cfg = LoadConfig(str(tiny_llama), attn_implementation="flex_attention", gradient_checkpointing=True)
    with pytest.raises(UnsupportedOnHost, match="flex_attention has no backward pass on the CPU"):
        get_model(cfg, CPU)
    with pytest.raises(UnsupportedOnHost, match="flex_attention has no backward pass on the CPU"):
        get_model(cfg.replace(gradient_checkpointing=False), CPU, training=True)


def test_bitsandbytes_missing_or_without_device(tiny_llama) -> None:
    missing = HostCapabilities(bitsandbytes_error="ModuleNotFoundError: No module named 'bitsandbytes'")
    with pytest.raises(UnsupportedOnHost, match="needs bitsandbytes, which cannot be imported here"):
        get_model(LoadConfig(str(tiny_llama), quantization="bnb-4bit"), missing)
    no_cuda_backend = HostCapabilities(
        gpu_host((9, 0)).gpus, bitsandbytes_version="0.50", bitsandbytes_devices=("cpu",)
    )
    with pytest.raises(UnsupportedOnHost, match="has no working cuda backend on this host"):
        get_model(LoadConfig(str(tiny_llama), quantization="bnb-8bit"), no_cuda_backend)


def test_cuda_device_without_gpu(tiny_llama) -> None:
    with pytest.raises(UnsupportedOnHost, match="device='cuda' needs a CUDA GPU; this host has none"):
        get_model(LoadConfig(str(tiny_llama), device="cuda"), CPU)


def test_real_probe_matches_torch() -> None:
    caps = probe_host()
    assert caps.cuda == torch.cuda.is_available()
    assert caps.bitsandbytes_version == bnb.__version__
    assert caps.device_type in caps.bitsandbytes_devices
    assert HostCapabilities.from_dict(caps.to_dict()) == caps


# -- bad checkpoints --------------------------------------------------------------------------------


def test_missing_model_path(tmp_path) -> None:
    with pytest.raises(CheckpointInvalid, match=r"model_name_or_path '.*nope' does not exist\."):
        get_model(LoadConfig(str(tmp_path / "nope")))


def test_directory_without_config(tmp_path) -> None:
    with pytest.raises(CheckpointInvalid, match=r"has no config\.json, so it is not a checkpoint"):
        get_tokenizer(LoadConfig(str(tmp_path)))


def test_corrupt_safetensors(tiny_llama, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(
        CheckpointInvalid, match=r"weights file .* is corrupt: its tensors need \d+ data bytes"
    ):
        get_model(LoadConfig(str(broken)))
    weights.write_bytes(b"\x00\x00")
    with pytest.raises(CheckpointInvalid, match="shorter than the 8-byte header length"):
        get_model(LoadConfig(str(broken)))


def test_uncached_hub_id_refused_offline() -> None:
    with pytest.raises(CheckpointInvalid, match="neither a local directory nor in the Hugging Face cache"):
        get_model(LoadConfig("Qwen/Qwen2.5-0.5B-Instruct-not-cached"))


def test_transformers_error_reraised_with_config(tiny_llama, tmp_path) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(tiny_llama, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["model_type"] = "no-such-architecture"
    (odd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError) as err:
        get_model(LoadConfig(str(odd), dtype="float32", attn_implementation="sdpa"))
    assert "dtype='float32'" in str(err.value) and "attn_implementation='sdpa'" in str(err.value)


def test_revision_and_trust_remote_code_reach_from_pretrained(tiny_llama, monkeypatch) -> None:
    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.update(kwargs)
        return real(cls, path, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    get_model(LoadConfig(str(tiny_llama), revision="v1.0", trust_remote_code=True))
    assert seen["revision"] == "v1.0"
    assert seen["trust_remote_code"] is True
    assert seen["local_files_only"] is True
    get_model(LoadConfig(str(tiny_llama)))
    assert seen["trust_remote_code"] is False
