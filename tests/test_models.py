"""The model resolver (bench.plan.models) on Hugging Face cache layouts built in temp dirs; no network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.errors import SpecError
from bench.plan.checkpoints import MARKER, checkpoint_fingerprint
from bench.plan.matrix import MatrixSpec
from bench.plan.models import CONFIG_FILES, materialize, resolve
from bench.plan.planning import make_plan
from loader.host import HostCapabilities
from tests.hf_cache import TINY_CONFIGS, add_snapshot

CPU = HostCapabilities(bitsandbytes_version="0.50", bitsandbytes_devices=("cpu",))


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache (HF_HUB_CACHE) and an empty loadbench cache (LOADBENCH_CACHE), offline."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LOADBENCH_CACHE", str(tmp_path / "lb"))
    return cache


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_config_only_snapshot_resolves_to_random_weights_and_builds_nothing(hub: Path, arch: str) -> None:
    add_snapshot(hub, f"tiny/{arch}", {"config.json": TINY_CONFIGS[arch]})
    model = resolve(f"tiny/{arch}")
    assert (model.source, model.weights, model.built) == ("hf-cache", "random", False)
    assert model.config["model_type"] == TINY_CONFIGS[arch]["model_type"]
    assert model.dtype == TINY_CONFIGS[arch]["torch_dtype"]
    assert resolve(f"tiny/{arch}").fingerprint == model.fingerprint  # plan and run agree
    assert not _files(hub.parent / "lb")


def test_plan_reads_configs_only_and_writes_nothing(hub: Path) -> None:
    add_snapshot(hub, "tiny/mistral", {"config.json": TINY_CONFIGS["mistral"]})
    before = _files(hub)
    plan = make_plan(MatrixSpec(model="tiny/mistral", dtype=("auto", "float32")), CPU)
    assert not _files(hub.parent / "lb") and _files(hub) == before
    assert {c.model_source for c in plan.cells} == {"hf-cache"} and {c.weights for c in plan.cells} == {
        "random"
    }
    assert {c.checkpoint for c in plan.cells} == {plan.fingerprint}
    record = plan.cells[0].record("ok", None)
    assert (record["model_source"], record["weights"], record["trust_remote_code"]) == (
        "hf-cache",
        "random",
        False,
    )


def test_revision_and_hf_home_are_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    hub = tmp_path / "home" / "hub"
    add_snapshot(hub, "org/m", {"config.json": TINY_CONFIGS["llama"]})
    v2 = {**TINY_CONFIGS["llama"], "num_hidden_layers": 3}
    add_snapshot(hub, "org/m", {"config.json": v2}, revision="v2", sha="f" * 40)
    assert resolve("org/m").config["num_hidden_layers"] == 2
    assert resolve("org/m", revision="v2").config["num_hidden_layers"] == 3
    assert resolve("org/m").fingerprint != resolve("org/m", revision="v2").fingerprint


def test_full_snapshot_has_real_weights_unless_random_is_asked(hub: Path, tiny_llama: Path) -> None:
    snap = add_snapshot(hub, "org/llama", tiny_llama)
    (snap / MARKER).unlink()  # a hub snapshot is not a loadbench build
    model = resolve("org/llama")
    assert (model.source, model.weights, model.checkpoint) == ("hf-cache", "real", snap)
    assert model.fingerprint == checkpoint_fingerprint(snap) and model.built
    assert materialize(model) == snap
    random = resolve("org/llama", weights="random")
    assert random.weights == "random" and random.fingerprint != model.fingerprint
    assert {name for name, _ in random.copied} >= {"tokenizer.json", "tokenizer_config.json"}


def test_real_weights_asked_of_a_config_only_snapshot_is_one_sentence(hub: Path) -> None:
    add_snapshot(hub, "org/cfg", {"config.json": TINY_CONFIGS["llama"], "pytorch_model.bin": b"x"})
    with pytest.raises(SpecError, match=r"only pickle weights \(pytorch_model.bin\).*--weights random"):
        resolve("org/cfg", weights="real")
    with pytest.raises(SpecError, match="weights='maybe' is not allowed"):
        resolve("org/cfg", weights="maybe")


def test_custom_code_needs_trust_remote_code(hub: Path) -> None:
    config = {
        **TINY_CONFIGS["llama"],
        "model_type": "my_doge",
        "auto_map": {"AutoModelForCausalLM": "modeling_doge.DogeForCausalLM"},
    }
    config["architectures"] = ["DogeForCausalLM"]
    add_snapshot(hub, "org/doge", {"config.json": config, "modeling_doge.py": b"# custom\n"})
    with pytest.raises(SpecError, match=r"needs its own code .*--trust-remote-code"):
        resolve("org/doge")
    model = resolve("org/doge", trust_remote_code=True)
    assert model.trust_remote_code and "modeling_doge.py" in dict(model.copied)
    # a model_type transformers ships itself needs no custom code, auto_map or not (Doge in transformers 5)
    add_snapshot(hub, "org/native", {"config.json": {**config, "model_type": "llama"}})
    assert resolve("org/native").source == "hf-cache"


def test_a_vision_language_config_is_refused_with_a_sentence(hub: Path) -> None:
    config = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"}
    add_snapshot(hub, "Qwen/Qwen2.5-VL-3B-Instruct", {"config.json": config})
    with pytest.raises(
        SpecError, match=r"is a Qwen2_5_VLForConditionalGeneration .*not a causal language model"
    ):
        resolve("Qwen/Qwen2.5-VL-3B-Instruct")


def test_not_found_names_where_it_looked_and_the_fixes(hub: Path) -> None:
    with pytest.raises(SpecError) as err:
        resolve("Qwen/Qwen2.5-1.5B-Instruct")
    text = str(err.value)
    assert str(hub) in text and "hf download Qwen/Qwen2.5-1.5B-Instruct config.json" in text
    assert "--online" in text and "--model qwen2.5-1.5b" in text
    with pytest.raises(SpecError, match="not a local checkpoint directory"):
        resolve("./no/such/dir")


def test_recipe_hub_id_resolves_through_the_cache(hub: Path, recipes_dir: Path) -> None:
    from bench.plan.checkpoints import load_preset

    recipe = recipes_dir / "Qwen2.5-1.5B-Instruct-grpo-config_demo.yaml"
    spec = MatrixSpec.from_recipe(recipe)
    assert spec.model == "Qwen/Qwen2.5-1.5B-Instruct"
    with pytest.raises(SpecError, match="not in the Hugging Face cache"):
        make_plan(spec, CPU)
    add_snapshot(hub, "Qwen/Qwen2.5-1.5B-Instruct", {"config.json": load_preset("qwen2.5-1.5b")})
    plan = make_plan(spec, CPU)
    assert len(plan.cells) == 1 and plan.cells[0].model_source == "hf-cache"


def test_online_fetches_configs_only(hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--online: huggingface_hub's download is pointed at a local 'remote'; weights are never asked for."""
    import huggingface_hub

    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps(TINY_CONFIGS["gemma"]))
    (remote / "model.safetensors").write_bytes(b"weights that must not be fetched")
    real = huggingface_hub.snapshot_download
    calls: list[dict[str, Any]] = []

    def fake(repo_id: str, **kwargs: Any) -> str:
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            return real(repo_id, **kwargs)
        patterns = kwargs["allow_patterns"]
        files = {f.name: f.read_bytes() for f in remote.iterdir() if f.name in patterns}
        return str(add_snapshot(Path(kwargs["cache_dir"]), repo_id, files))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(SpecError, match="--online"):
        resolve("google/gemma-tiny")
    assert not calls  # no network without asking
    model = resolve("google/gemma-tiny", online=True)
    assert (model.source, model.weights) == ("hub", "random")
    assert not any(p.endswith((".safetensors", ".bin")) for c in calls for p in c.get("allow_patterns") or [])
    assert set(calls[-1]["allow_patterns"]) == set(CONFIG_FILES)
    assert not list(model.source_dir.glob("*.safetensors")) if model.source_dir else False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # set explicitly: the user allows the network
    shutil.rmtree(hub / "models--google--gemma-tiny")
    assert resolve("google/gemma-tiny").source == "hub"


def test_a_loadbench_build_given_by_path_is_used_as_it_is(tiny_llama: Path) -> None:
    model = resolve(str(tiny_llama))
    assert (model.source, model.weights, model.built) == ("local", "random", True)
    assert model.fingerprint == checkpoint_fingerprint(tiny_llama) and materialize(model) == tiny_llama


def test_preset_keeps_its_cache_entry(ckpt_cache: Path, tiny_llama: Path) -> None:
    model = resolve("tiny-llama", cache_dir=ckpt_cache)
    assert (model.source, model.weights, model.checkpoint) == ("preset", "random", tiny_llama)
    assert model.built and materialize(model) == tiny_llama
    with pytest.raises(SpecError, match="only random weights"):
        resolve("tiny-llama", weights="real")


def test_random_build_uses_the_snapshots_tokenizer(hub: Path, tiny_llama: Path) -> None:
    files: dict[str, Any] = {"config.json": TINY_CONFIGS["mistral"]}
    for name in ("tokenizer.json", "tokenizer_config.json"):
        files[name] = (tiny_llama / name).read_bytes()
    add_snapshot(hub, "mistralai/tiny", files)
    model = resolve("mistralai/tiny")
    path = materialize(model)
    assert path == model.checkpoint and resolve("mistralai/tiny").built
    assert (path / "tokenizer.json").read_bytes() == files["tokenizer.json"]
    marker = json.loads((path / MARKER).read_text())
    assert marker["hash"] == model.fingerprint and marker["config_overrides"] == {}
    assert json.loads((path / "config.json").read_text())["model_type"] == "mistral"


# ------------------------------------------------------------------------------- end to end (slow)
def _run(model: str, out: Path, *extra: str) -> list[dict[str, Any]]:
    from bench.cli import main
    from bench.run.store import RunStore

    args = ["run", "--model", model, "--dtype", "float32", "--quant", "none", "--attn", "sdpa"]
    args += ["--grad-ckpt", "off", "--seq", "16", "--new-tokens", "4", "--budget", "0.2", "--no-live"]
    assert main([*args, "--out", str(out), *extra]) == 0
    return RunStore.open(out).records()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mistral", "qwen3_moe", "gemma"])
def test_run_a_config_only_hub_model_end_to_end(hub: Path, tmp_path: Path, arch: str, capfd) -> None:
    add_snapshot(hub, f"tiny/{arch}", {"config.json": TINY_CONFIGS[arch]})
    (record,) = _run(f"tiny/{arch}", tmp_path / "run")
    assert record["status"] == "ok", record.get("reason")
    assert (record["model_source"], record["weights"], record["model"]) == (
        "hf-cache",
        "random",
        f"tiny/{arch}",
    )
    assert record["prefill.tokens_per_s"] > 0 and record["decode.tokens_per_s"] > 0
    assert "building random weights" in capfd.readouterr().err  # the build is visible, in `run`


@pytest.mark.slow
def test_run_a_full_snapshot_with_real_weights(hub: Path, tmp_path: Path, tiny_llama: Path) -> None:
    snap = add_snapshot(hub, "org/llama", tiny_llama)
    (snap / MARKER).unlink()
    (record,) = _run("org/llama", tmp_path / "run")
    assert record["status"] == "ok", record.get("reason")
    assert (record["model_source"], record["weights"]) == ("hf-cache", "real")
    assert record["checkpoint"] == checkpoint_fingerprint(snap)
    assert not (hub.parent / "lb" / "checkpoints").exists()  # nothing built for real weights


def test_plan_of_a_preset_builds_nothing(hub: Path) -> None:
    """The default run's preset is built by `run`, not `plan`; its cell ids are the same either way."""
    plan = make_plan(MatrixSpec(), CPU)
    assert plan.model is not None and plan.model.source == "preset" and not plan.model.built
    assert not _files(hub.parent / "lb")
    assert plan.fingerprint == resolve("tiny-llama").fingerprint
