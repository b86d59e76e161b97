"""Synthetic checkpoints: presets match the published configs, builds load cleanly and are cached safely."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bench.plan import synthetic
from bench.plan.checkpoints import (
    CheckpointError,
    checkpoint_fingerprint,
    list_presets,
    load_preset,
    make_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["tiny-llama", "tiny-qwen2"]

# Published values (Qwen/Qwen2.5-*-Instruct, meta-llama/Llama-3.2-1B, HuggingFaceTB/SmolLM2-1.7B), with
# the parameter counts the model cards give: a wrong shape anywhere changes the count.
PUBLISHED: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
        tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768,
        bos_token_id=151643, eos_token_id=151645, params=494_032_768,
    ),
    "qwen2.5-1.5b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=1536, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960, vocab_size=151936,
        tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768,
        bos_token_id=151643, eos_token_id=151645, params=1_543_714_304,
    ),
    "qwen2.5-7b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=3584, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
        tie_word_embeddings=False, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768,
        bos_token_id=151643, eos_token_id=151645, params=7_615_616_512,
    ),
    "llama-3.2-1b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
        tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
        rope_scaling=dict(
            rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        params=1_235_814_400,
    ),
    "smollm2-1.7b": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048, num_hidden_layers=24,
        num_attention_heads=32, num_key_value_heads=32, intermediate_size=8192, vocab_size=49152,
        tie_word_embeddings=True, rope_theta=130000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
        params=1_711_376_384,
    ),
}  # fmt: skip


def _rope(config: Any) -> dict[str, Any]:
    """rope settings under either spelling: transformers 5 folds rope_theta/rope_scaling into rope_parameters."""
    params = getattr(config, "rope_parameters", None)
    if params:
        return dict(params)
    return {"rope_theta": config.rope_theta, **(config.rope_scaling or {})}


def _tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _headers(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(path.glob("*.safetensors")):
        with f.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        out.update(header)
    return out


def _load(path: Path) -> tuple[Any, dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("ckpt")
    return {name: make_checkpoint(name, cache_dir=cache) for name in TINY}


# ------------------------------------------------------------------------------------------ presets


def test_every_shipped_preset_is_listed_and_is_a_transformers_config() -> None:
    from transformers import AutoConfig

    assert set(PUBLISHED) | set(TINY) <= set(list_presets())
    for name in list_presets():
        spec = load_preset(name)
        config = AutoConfig.for_model(**spec)
        assert config.model_type == spec["model_type"]
        assert config.architectures == spec["architectures"]
        assert "torch_dtype" not in spec, "presets use the transformers 5 spelling `dtype`"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_matches_the_published_config(name: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    want = dict(PUBLISHED[name])
    params = want.pop("params")
    rope_scaling = want.pop("rope_scaling", None)
    rope_theta = want.pop("rope_theta")
    config = AutoConfig.for_model(**load_preset(name))
    for field, value in want.items():
        assert getattr(config, field) == value, field
    assert config.dtype == torch.bfloat16
    rope = _rope(config)
    assert rope["rope_theta"] == rope_theta
    for field, value in (rope_scaling or {}).items():
        assert rope[field] == value, field
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert model.num_parameters() == params


def test_unknown_preset_names_the_value_and_the_choices(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        make_checkpoint("qwen9-huge", cache_dir=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "'qwen9-huge'" in message
    for name in list_presets():
        assert name in message
    with pytest.raises(CheckpointError, match="qwen9-huge"):
        load_preset("qwen9-huge")
    with pytest.raises(CheckpointError, match=re.escape("'../tiny-llama'")):
        load_preset("../tiny-llama")


def test_bad_dtype_and_seed_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"'int8'.*float32, bfloat16, float16"):
        make_checkpoint("tiny-llama", cache_dir=tmp_path, dtype="int8")
    with pytest.raises(CheckpointError, match="seed -1"):
        make_checkpoint("tiny-llama", cache_dir=tmp_path, seed=-1)


# ------------------------------------------------------------------------------------------ builds


@pytest.mark.parametrize("name", TINY)
def test_tiny_checkpoint_loads_without_missing_weights(built: dict[str, Path], name: str) -> None:
    import torch
    from transformers import AutoTokenizer

    path = built[name]
    names = {p.name for p in path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "loadbench.json",
    } <= names
    model, info = _load(path)
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    assert info["error_msgs"] == []
    assert model.dtype == torch.float32
    tied = load_preset(name)["tie_word_embeddings"]
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied
    assert ("lm_head.weight" in _headers(path)) is not tied

    # the initialisation the builder promises: normal(0, 0.02) matrices, ones for norms, zeros for biases
    weights = _tensors(path)
    embed = weights["model.embed_tokens.weight"]
    assert abs(embed.mean().item()) < 2e-3 and abs(embed.std().item() - 0.02) < 2e-3
    assert torch.equal(weights["model.norm.weight"], torch.ones_like(weights["model.norm.weight"]))
    biases = [k for k in weights if k.endswith(".bias")]
    assert bool(biases) is (name == "tiny-qwen2")  # Qwen2 has q/k/v biases
    assert all(not weights[k].any() for k in biases)

    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("a short prompt to run", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", TINY)
def test_tokenizer_chat_template_and_ids_fit_the_model(built: dict[str, Path], name: str) -> None:
    from transformers import AutoConfig, AutoTokenizer

    path = built[name]
    tok = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert len(tok) <= config.vocab_size
    assert max(tok.get_vocab().values()) < config.vocab_size
    sample = "Prices rose 12.5% in 2024; café owners said: ¿qué? 中文 🙂\n\tdef f(x): return x"
    ids = tok(text + sample)["input_ids"]
    assert max(ids) < config.vocab_size
    assert tok.decode(tok(sample)["input_ids"]) == sample
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    meta = json.loads((path / "loadbench.json").read_text())
    assert meta["preset"] == name
    assert meta["config_overrides"]["eos_token_id"]["checkpoint"] == tok.eos_token_id


def test_cache_hit_returns_the_same_path_without_rebuilding(tmp_path: Path) -> None:
    first = make_checkpoint("tiny-llama", cache_dir=tmp_path)
    assert first.parent == tmp_path.resolve() / "checkpoints"
    assert first.name.startswith("tiny-llama-") and len(first.name) == len("tiny-llama-") + 16
    before = {p.name: p.stat().st_mtime_ns for p in [first, *first.iterdir()]}
    second = make_checkpoint("tiny-llama", cache_dir=tmp_path)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in [first, *first.iterdir()]} == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [first.name]


def test_cache_hit_is_fast_and_imports_no_torch(tmp_path: Path) -> None:
    make_checkpoint("tiny-llama", cache_dir=tmp_path)
    script = textwrap.dedent(
        f"""
        import sys, time
        start = time.perf_counter()
        from bench.plan.checkpoints import make_checkpoint
        path = make_checkpoint("tiny-llama", cache_dir={str(tmp_path)!r})
        print(time.perf_counter() - start, path, "torch" in sys.modules, "transformers" in sys.modules)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    _seconds, path, torch_loaded, transformers_loaded = out.stdout.split()
    assert Path(path).parent == tmp_path.resolve() / "checkpoints"
    assert (torch_loaded, transformers_loaded) == ("False", "False")


def test_cache_location_follows_loadbench_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADBENCH_CACHE", str(tmp_path / "env-cache"))
    path = make_checkpoint("tiny-llama")
    assert path.parent == (tmp_path / "env-cache" / "checkpoints").resolve()


def test_seed_picks_the_weights_and_the_hash(tmp_path: Path) -> None:
    import torch

    a = make_checkpoint("tiny-llama", cache_dir=tmp_path / "one", seed=0)
    b = make_checkpoint("tiny-llama", cache_dir=tmp_path / "two", seed=0)
    c = make_checkpoint("tiny-llama", cache_dir=tmp_path / "one", seed=1)
    assert a.name == b.name != c.name
    ta, tb, tc = _tensors(a), _tensors(b), _tensors(c)
    assert ta.keys() == tb.keys() == tc.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    matrices = [k for k in ta if ta[k].dim() == 2]
    assert all(not torch.equal(ta[k], tc[k]) for k in matrices)
    # the tokenizer does not depend on the weight seed, and identical inputs give identical files
    assert (
        (a / "tokenizer.json").read_bytes()
        == (b / "tokenizer.json").read_bytes()
        == (c / "tokenizer.json").read_bytes()
    )
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_dtype_override_is_saved(tmp_path: Path) -> None:
    import torch

    f32 = make_checkpoint("tiny-qwen2", cache_dir=tmp_path)
    bf16 = make_checkpoint("tiny-qwen2", cache_dir=tmp_path, dtype="bfloat16")
    assert f32 != bf16
    assert {t.dtype for t in _tensors(bf16).values()} == {torch.bfloat16}
    assert {h["dtype"] for h in _headers(bf16).values()} == {"BF16"}
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((bf16 / "loadbench.json").read_text())["dtype"] == "bfloat16"
    model, info = _load(bf16)
    assert model.dtype == torch.bfloat16
    assert not info["missing_keys"]
    # same seed, same values up to the cast
    a, b = _tensors(f32), _tensors(bf16)
    assert torch.allclose(
        a["model.embed_tokens.weight"].to(torch.bfloat16).float(),
        b["model.embed_tokens.weight"].float(),
        atol=1e-2,
    )


def test_sharded_checkpoint_has_an_index_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "MAX_SHARD_BYTES", 400_000)
    path = make_checkpoint("tiny-llama", cache_dir=tmp_path)
    shards = sorted(p.name for p in path.glob("*.safetensors"))
    assert len(shards) > 1
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    index = json.loads((path / "model.safetensors.index.json").read_text())
    headers = _headers(path)
    assert set(index["weight_map"]) == set(headers)
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(
        h["data_offsets"][1] - h["data_offsets"][0] for h in headers.values()
    )
    for shard in path.glob("*.safetensors"):  # at most the limit, unless a single tensor is larger
        one = _headers_of(shard)
        assert (
            len(one) == 1 or sum(h["data_offsets"][1] - h["data_offsets"][0] for h in one.values()) <= 400_000
        )
    _, info = _load(path)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def _headers_of(shard: Path) -> dict[str, Any]:
    with shard.open("rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    header.pop("__metadata__", None)
    return header


def test_out_dir_builds_there_and_refuses_foreign_files(tmp_path: Path) -> None:
    out = tmp_path / "made"
    out.mkdir()  # an existing empty directory is fine
    assert make_checkpoint("tiny-llama", out) == out.resolve()
    assert (out / "loadbench.json").is_file()
    assert make_checkpoint("tiny-llama", out) == out.resolve()  # the same checkpoint again: nothing to do
    with pytest.raises(CheckpointError, match="not empty"):
        make_checkpoint("tiny-llama", out, seed=7)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        make_checkpoint("tiny-llama", busy)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "made"]  # no temp dirs left behind


def _build_in_child(cache: str, barrier: Any, results: Any) -> None:
    import torch  # noqa: F401  (imported before the barrier so both builders race on the build itself)
    import transformers  # noqa: F401

    barrier.wait()
    results.put(str(make_checkpoint("tiny-llama", cache_dir=cache)))


@pytest.mark.slow
def test_concurrent_builders_share_one_complete_checkpoint(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    paths = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert paths[0] == paths[1]
    path = Path(paths[0])
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [path.name]  # no temp dirs left
    assert json.loads((path / "loadbench.json").read_text())["hash"] == path.name.rsplit("-", 1)[1]
    _, info = _load(path)
    assert not info["missing_keys"]


# ------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_tracks_the_config(tmp_path: Path) -> None:
    a = make_checkpoint("tiny-llama", cache_dir=tmp_path / "one")
    b = make_checkpoint("tiny-llama", cache_dir=tmp_path / "two")
    fp = checkpoint_fingerprint(a)
    assert len(fp) == 16 and fp == checkpoint_fingerprint(a) == checkpoint_fingerprint(b)
    assert checkpoint_fingerprint(make_checkpoint("tiny-llama", cache_dir=tmp_path, seed=3)) != fp
    assert checkpoint_fingerprint(make_checkpoint("tiny-qwen2", cache_dir=tmp_path)) != fp

    edited = tmp_path / "edited"
    shutil.copytree(a, edited)
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps(config, indent=4))  # formatting alone changes nothing
    assert checkpoint_fingerprint(edited) == fp
    config["rms_norm_eps"] = 1e-6
    (edited / "config.json").write_text(json.dumps(config))
    assert checkpoint_fingerprint(edited) != fp
    with pytest.raises(CheckpointError, match=re.escape("no config.json")):
        checkpoint_fingerprint(tmp_path)


# -------------------------------------------------------------------------------------- real shape


@pytest.mark.slow
def test_qwen2_5_0_5b_builds_in_bfloat16_without_a_float32_copy(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import resource, time
        from bench.plan.checkpoints import make_checkpoint
        start = time.perf_counter()
        path = make_checkpoint("qwen2.5-0.5b", cache_dir={str(tmp_path)!r})
        print(path, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    path_s, seconds, maxrss_kib = out.stdout.split()
    path = Path(path_s)
    headers = _headers(path)
    params = sum(_numel(h["shape"]) for h in headers.values())
    assert params == 494_032_768  # tied: lm_head shares embed_tokens and is not stored
    assert "lm_head.weight" not in headers
    assert {h["dtype"] for h in headers.values()} == {"BF16"}
    assert [p.name for p in path.glob("*.safetensors")] == ["model.safetensors"]  # 0.99 GB < 2 GiB
    # Peak RSS of the whole build (imports included) stays below even one bf16 copy of the weights.
    assert int(maxrss_kib) * 1024 < params * 2, (seconds, maxrss_kib)

    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    assert len(tok) == 4096 < config.vocab_size == 151936
    assert (tok.bos_token_id, tok.eos_token_id) == (config.bos_token_id, config.eos_token_id)
    meta = json.loads((path / "loadbench.json").read_text())
    assert meta["config_overrides"]["eos_token_id"]["preset"] == 151645
    assert meta["weights"]["num_parameters"] == params


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
