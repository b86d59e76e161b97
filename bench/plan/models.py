"""The model resolver: what the user named becomes one model with a source, weights and a fingerprint.

Order (bench.schema.MODEL_SOURCES): a local directory; a hub id in the Hugging Face cache, found the
way huggingface_hub finds it (HF_HUB_CACHE / HF_HOME, refs/<revision>, snapshots/<sha>); with the
network allowed (`--online`, or HF_HUB_OFFLINE=0 set explicitly), the hub id's config.json and
tokenizer files fetched with huggingface_hub, never its weights; an architecture preset. Anything else
is one sentence naming where it looked and how to fix it.

Only config files are read here, so `plan` stays fast and writes nothing: a snapshot with safetensors
weights is used as it is (real weights, unless `weights="random"`); otherwise random weights of exactly
that architecture are built by `run` (`materialize`) with transformers' from_config, cached under a
hash of their inputs. That hash is the fingerprint of a random checkpoint, so plan and run agree on
every cell_id before anything is built.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import CheckpointError, SpecError
from bench.plan.checkpoints import (
    MARKER,
    build_into,
    cache_root,
    checkpoint_fingerprint,
    list_presets,
    load_preset,
    marker_key,
    read_json,
)
from bench.plan.spec import HUB_TO_PRESET
from bench.plan.synthetic import WEIGHT_DTYPES, Progress, build, cache_key

__all__ = [
    "CONFIG_FILES",
    "TOKENIZER_FILES",
    "WEIGHT_CHOICES",
    "ResolvedModel",
    "materialize",
    "online_allowed",
    "resolve",
]

WEIGHT_CHOICES = ("auto", "real", "random")
# What a tokenizer can consist of; copied into a random-weight checkpoint when the snapshot has them.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
# Everything `--online` may fetch: configs and tokenizer files, never weights.
CONFIG_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)
_TOKENIZER_CORE = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class ResolvedModel:
    """A model the plan can expand: its config, where cells load it from, and its fingerprint."""

    name: str  # what the user gave
    source: str  # bench.schema.MODEL_SOURCES
    weights: str  # "real" | "random"
    config: dict[str, Any]  # config.json as found (before any build)
    checkpoint: Path  # the directory cells load; for random weights, where `run` builds it
    fingerprint: str
    source_dir: Path | None = None  # the directory config.json was read from (None: a preset)
    dtype: str | None = None  # the dtype random weights are written in
    seed: int = 0
    copied: tuple[tuple[str, str], ...] = ()  # files a build copies from source_dir, with their sha256
    trust_remote_code: bool = False

    @property
    def built(self) -> bool:
        """Whether the checkpoint's files exist (real weights, or random ones already in the cache)."""
        if self.weights == "real" or self.checkpoint == self.source_dir:  # used where it is
            return True
        return marker_key(self.checkpoint) == self.fingerprint

    def describe(self) -> str:
        """One line for `plan` and `run`: what the model is and where it comes from."""
        where = {"local": "local directory", "hf-cache": "Hugging Face cache", "hub": "hub (config only)"}
        origin = where.get(self.source, "built-in preset")
        if self.weights == "real":
            return f"{self.name}: real weights from the {origin} ({self.checkpoint})"
        state = "cached" if self.built else "built by `run`, then cached"
        tok = "its own tokenizer" if self.copied else "a locally trained tokenizer"
        return (
            f"{self.name}: random {self.dtype} weights of its config from the {origin}, with {tok} "
            f"({state}: {self.checkpoint})"
        )


def online_allowed(online: bool) -> bool:
    """The network is used only when asked: `--online`, or HF_HUB_OFFLINE=0 set explicitly."""
    return online or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("0", "false", "no", "off")


def resolve(
    name: str,
    *,
    revision: str | None = None,
    weights: str = "auto",
    online: bool = False,
    trust_remote_code: bool = False,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> ResolvedModel:
    """Resolve `name` (local dir | hub id | preset) to a model; reads config files only."""
    if weights not in WEIGHT_CHOICES:
        raise SpecError(f"weights={weights!r} is not allowed; use one of: {', '.join(WEIGHT_CHOICES)}.")
    revision = revision or "main"
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            from loader.files import check_local_model_dir

            check_local_model_dir(path)  # raises its sentence (a file, no config.json)
        return _from_dir(name, path, "local", weights, trust_remote_code, seed, cache_dir)
    hub_like = not name.startswith(("/", ".", "~")) and name.count("/") <= 1
    if hub_like:
        snapshot = _cached_snapshot(name, revision)
        if snapshot is not None:
            return _from_dir(name, snapshot, "hf-cache", weights, trust_remote_code, seed, cache_dir)
    presets = list_presets()
    if name in presets:
        if weights == "real":
            raise SpecError(f"model {name!r} is an architecture preset, which has only random weights.")
        return _preset(name, seed, cache_dir)
    if hub_like and online_allowed(online):
        snapshot = _fetch_configs(name, revision)
        return _from_dir(name, snapshot, "hub", weights, trust_remote_code, seed, cache_dir)
    raise SpecError(_not_found(name, revision, hub_like, presets))


def materialize(model: ResolvedModel, progress: Progress | None = None) -> Path:
    """The directory cells load: real weights as they are; random ones built (once) into the cache.

    This is the heavy step `plan` never takes; `progress(bytes_written, bytes_total)` follows it.
    """
    if model.built:
        return model.checkpoint
    if model.checkpoint.exists():
        raise CheckpointError(
            f"cache entry {str(model.checkpoint)!r} exists but has no complete {MARKER}; "
            "delete it (`loadbench cache clean`) and run again."
        )
    assert model.dtype is not None  # random weights always have one

    def write(tmp: Path) -> None:
        build(
            tmp,
            _slug(model.name) if model.source != "preset" else model.name,
            model.config,
            model.dtype or "float32",
            model.seed,
            model.fingerprint,
            source=model.source_dir,
            copied=dict(model.copied),
            trust_remote_code=model.trust_remote_code,
            progress=progress,
        )

    return build_into(model.checkpoint, model.fingerprint, write)


# ------------------------------------------------------------------------------------------ internals
def _cached_snapshot(repo_id: str, revision: str) -> Path | None:
    """The snapshot directory holding the hub id's config.json in the cache, as huggingface_hub finds it
    offline (refs/<revision> -> snapshots/<sha>); try_to_load_from_cache keeps `plan` light (no hf_api)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=_hub_cache(), revision=revision)
    except ValueError:  # HFValidationError: not a valid repo id, so not in the cache
        return None
    return Path(found).parent if isinstance(found, str) else None


def _hub_cache() -> str:
    """huggingface_hub's cache directory, read now (its constants are read once, at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return str(constants.HF_HUB_CACHE)


def _fetch_configs(repo_id: str, revision: str) -> Path:
    """config.json and tokenizer files from the hub (asked for with --online); never weights."""
    import huggingface_hub

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=list(CONFIG_FILES), cache_dir=_hub_cache()
        )
    except Exception as exc:  # network, auth, a repo that does not exist: all one sentence
        raise SpecError(
            f"model {repo_id!r} (revision {revision!r}) could not be fetched from the hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); check the id, "
            "your network and HF_TOKEN for gated models."
        ) from None
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise SpecError(
            f"model {repo_id!r} on the hub has no config.json, so it is not a transformers model."
        )
    return path


def _not_found(name: str, revision: str, hub_like: bool, presets: list[str]) -> str:
    if not hub_like:
        return f"model {name!r} is not a local checkpoint directory (the path does not exist)."
    alike = HUB_TO_PRESET.get(name.lower().removesuffix("-instruct"))
    same = f"; or --model {alike}, a built-in preset of the same shape" if alike else ""
    return (
        f"model {name!r} is not a local directory, not in the Hugging Face cache at {_hub_cache()} "
        f"(revision {revision!r}) and not a preset ({', '.join(presets)}); download its config only with "
        f"`hf download {name} config.json` (loadbench then builds random weights), or pass --online to "
        f"let loadbench fetch config and tokenizer, or give a local checkpoint path{same}."
    )


def _check_config(name: str, config: dict[str, Any], trust_remote_code: bool) -> None:
    """Refuse custom code unless allowed, and configs that are not causal language models."""
    auto_map = config.get("auto_map")
    if auto_map and not trust_remote_code and not _native(config.get("model_type")):
        raise SpecError(
            f"model {name!r} needs its own code (config.json has auto_map: "
            f"{', '.join(sorted(auto_map)) if isinstance(auto_map, dict) else auto_map}); loadbench never "
            "runs it unless you pass --trust-remote-code (recorded in every record)."
        )
    archs = config.get("architectures") or []
    causal = any(str(a).endswith("ForCausalLM") for a in archs) or (
        isinstance(auto_map, dict) and "AutoModelForCausalLM" in auto_map
    )
    if archs and not causal:
        raise SpecError(
            f"model {name!r} is a {archs[0]} (model_type {config.get('model_type')!r}), not a causal "
            "language model (…ForCausalLM); loadbench measures causal LMs, so pass its text-only "
            "variant or another model."
        )


def _native(model_type: Any) -> bool:
    """Whether the installed transformers ships this model_type itself (models/<type>/), so a config's
    auto_map is not needed: transformers uses its own class. Looked up on disk: importing transformers
    would cost `plan` seconds."""
    import importlib.util

    spec = importlib.util.find_spec("transformers")
    if (
        not isinstance(model_type, str)
        or not model_type
        or spec is None
        or not spec.submodule_search_locations
    ):
        return False
    return (Path(spec.submodule_search_locations[0]) / "models" / model_type.replace("-", "_")).is_dir()


def _read_config(path: Path) -> dict[str, Any]:
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        raise SpecError(f"{str(path / 'config.json')!r} is not a JSON object.")
    return config


def _from_dir(
    name: str,
    path: Path,
    source: str,
    weights: str,
    trust_remote_code: bool,
    seed: int,
    cache_dir: str | Path | None,
) -> ResolvedModel:
    config = _read_config(path)
    _check_config(name, config, trust_remote_code)
    has_weights = any(path.glob("*.safetensors"))
    if has_weights and marker_key(path) is not None and weights != "real":
        # a checkpoint loadbench built (`loadbench checkpoint`), given by path: use it as it is
        fp = checkpoint_fingerprint(path)
        return ResolvedModel(
            name, source, "random", config, path, fp, path, trust_remote_code=trust_remote_code
        )
    if weights != "random" and has_weights:
        from loader.files import check_local_model_dir

        try:
            check_local_model_dir(path)
        except Exception as exc:  # CheckpointInvalid: a missing shard, a truncated file
            raise SpecError(f"{exc} Use --weights random to benchmark its architecture.") from None
        fp = checkpoint_fingerprint(path)
        return ResolvedModel(
            name, source, "real", config, path, fp, path, trust_remote_code=trust_remote_code
        )
    if weights == "real":
        pickled = sorted(p.name for p in path.glob("*.bin"))
        why = (
            f"only pickle weights ({', '.join(pickled[:2])}), which loadbench does not load"
            if pickled
            else "no *.safetensors weights"
        )
        raise SpecError(
            f"model {name!r} at {str(path)!r} has {why}; download the safetensors weights, or use "
            "--weights random to benchmark its architecture."
        )
    dtype = _weights_dtype(config)
    wanted = list(TOKENIZER_FILES) if any((path / f).is_file() for f in _TOKENIZER_CORE) else []
    if trust_remote_code and config.get("auto_map"):
        wanted += sorted(p.name for p in path.glob("*.py"))
    copied = tuple((f, _sha256(path / f)) for f in wanted if (path / f).is_file())
    key = cache_key(_slug(name), config, dtype, seed, dict(copied))
    dest = cache_root(cache_dir) / "checkpoints" / f"{_slug(name)}-{key}"
    return ResolvedModel(
        name, source, "random", config, dest, key, path, dtype, seed, copied, trust_remote_code
    )


def _preset(name: str, seed: int, cache_dir: str | Path | None) -> ResolvedModel:
    """A preset: the cache entry `make_checkpoint` would build, keyed as it always was."""
    from bench.plan.synthetic import weights_dtype

    spec = load_preset(name)
    dtype = weights_dtype(spec, None)
    key = cache_key(name, spec, dtype, seed)
    dest = cache_root(cache_dir) / "checkpoints" / f"{name}-{key}"
    return ResolvedModel(name, "preset", "random", spec, dest, key, None, dtype, seed)


def _weights_dtype(config: dict[str, Any]) -> str:
    """The dtype random weights are written in: the one config.json declares, else float32."""
    declared = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return declared if declared in WEIGHT_DTYPES else "float32"


def _slug(name: str) -> str:
    """A cache directory name for a model: hub ids as huggingface_hub names them, paths by their leaf."""
    if Path(name).expanduser().exists():
        return "local--" + Path(name).expanduser().resolve().name
    return "hf--" + name.replace("/", "--")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
