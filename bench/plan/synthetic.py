"""Synthetic checkpoint files: a locally trained tokenizer and random weights in safetensors, and the key
that names them.

Load time, memory and throughput depend on shapes, not weight values, so a checkpoint with the real config,
random weights and a small locally trained tokenizer gives true numbers for everything but quality.
bench.plan.checkpoints decides where a build goes and publishes it; this module writes the files. torch,
transformers and tokenizers are imported only inside the functions that build, so a cache hit stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.errors import CheckpointError

# Called as progress(bytes_written, bytes_total) while the weights are written.
Progress = Callable[[int, int], None]

__all__ = [
    "BUILDER_VERSION",
    "CHAT_TEMPLATE",
    "MARKER",
    "MAX_SHARD_BYTES",
    "TOKENIZER_SETTINGS",
    "WEIGHT_DTYPES",
    "build",
    "cache_key",
    "canonical_json",
    "tokenizer_vocab",
    "weights_dtype",
]

# Bump when anything the builder writes changes, so old cache entries are not mistaken for new ones.
BUILDER_VERSION = 1

MARKER = "loadbench.json"
# Hub checkpoints shard at a few GiB; a tensor larger than this gets a shard of its own.
MAX_SHARD_BYTES = 2 * 1024**3
# Random numbers are drawn in blocks of rows so no tensor (and no float32 temporary) is ever whole.
_CHUNK_ELEMENTS = 1 << 24

# name -> (safetensors dtype code, bytes per element)
WEIGHT_DTYPES: dict[str, tuple[str, int]] = {
    "float32": ("F32", 4),
    "bfloat16": ("BF16", 2),
    "float16": ("F16", 2),
}

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Everything that shapes the tokenizer; it is hashed into the cache key.
TOKENIZER_SETTINGS: dict[str, Any] = {
    "kind": "byte-level BPE, trained locally with the tokenizers library",
    "special_tokens": {
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "pad": "<|pad|>",
        "im_start": "<|im_start|>",
        "im_end": "<|im_end|>",
    },
    "max_vocab": 4096,
    "corpus_seed": 1234,
    "corpus_chars": 200_000,
    "pseudo_words": 6000,
    "chat_template": CHAT_TEMPLATE,
}

_COMMON_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have "
    "an had they you were their one all we can her has there been if more when will would who so no "
    "model token layer weight load memory cache batch sequence attention time number first new data "
    "after other some what into only time over also use two how our work well way even because any "
    "these give day most us people year say good make know take see come think look want find tell"
)
_ONSETS = "b c d f g h j k l m n p r s t v w z br cr dr fr gr pr tr st sp sk ch sh th"
_NUCLEI = "a e i o u ai ea ou io"
_CODAS = ("", "", "n", "r", "s", "t", "l", "nd", "st", "ng")
_EXTRAS = (
    "café",
    "naïve",
    "über",
    "año",
    "日本語",
    "中文",
    "🙂",
    "λ",
    "→",
    "def",
    "return",
    "{}",
    "()",
    "[]",
)


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no spaces: equal data hash equal however it was formatted."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def weights_dtype(spec: dict[str, Any], dtype: str | None) -> str:
    """The dtype the weights are written in: `dtype`, else the preset's, checked against what we write."""
    name = dtype if dtype is not None else spec.get("dtype", spec.get("torch_dtype", "float32"))
    if name not in WEIGHT_DTYPES:
        raise CheckpointError(f"dtype {name!r} is not one of: {', '.join(WEIGHT_DTYPES)}.")
    return name


def tokenizer_vocab(spec: dict[str, Any]) -> int:
    """Tokenizer size: the model's vocabulary capped at max_vocab, so every id is a valid row."""
    vocab = int(spec["vocab_size"])
    minimum = 256 + len(TOKENIZER_SETTINGS["special_tokens"])
    if vocab < minimum:
        raise CheckpointError(
            f"vocab_size {vocab} is too small for a byte-level tokenizer, which needs at least {minimum}."
        )
    return min(vocab, TOKENIZER_SETTINGS["max_vocab"])


def cache_key(
    preset: str,
    spec: dict[str, Any],
    dtype: str,
    seed: int,
    copied: dict[str, str] | None = None,
) -> str:
    """16 hex digits of a hash of everything that decides the checkpoint's bytes.

    `copied` (file name -> sha256) lists files taken from the model's own snapshot (its tokenizer,
    custom code); without it the key is what it has always been, so preset cache entries stay valid.
    """
    inputs: dict[str, Any] = {
        "builder_version": BUILDER_VERSION,
        "preset": preset,
        "config": spec,
        "dtype": dtype,
        "seed": seed,
        "tokenizer": {**TOKENIZER_SETTINGS, "vocab_size": tokenizer_vocab(spec)},
        "max_shard_bytes": MAX_SHARD_BYTES,
        "chunk_elements": _CHUNK_ELEMENTS,
    }
    if copied:
        inputs["copied"] = copied
        inputs.pop("tokenizer")
    return hashlib.sha256(canonical_json(inputs)).hexdigest()[:16]


def build(
    tmp: Path,
    preset: str,
    spec: dict[str, Any],
    dtype: str,
    seed: int,
    key: str,
    *,
    source: Path | None = None,
    copied: dict[str, str] | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> None:
    """Write a whole checkpoint into `tmp`: tokenizer, config, generation config, weights, then MARKER.

    With `source` and `copied`, the named files (the model's real tokenizer, its custom code) are
    copied from `source` and the config keeps its own token ids; otherwise a BPE is trained locally.
    """
    config = dict(spec)
    if copied and source is not None:
        for name in copied:
            shutil.copyfile(source / name, tmp / name)
        tokenizer_note: dict[str, Any] = {"kind": "copied from the model's snapshot", "files": sorted(copied)}
        overrides: dict[str, Any] = {}
    else:
        specials = TOKENIZER_SETTINGS["special_tokens"]
        tokenizer = _train_tokenizer(tokenizer_vocab(spec))
        ids = {role: tokenizer.token_to_id(tok) for role, tok in specials.items()}
        _write_tokenizer(tmp, tokenizer, model_max_length=int(spec.get("max_position_embeddings", 2048)))
        # The preset's token ids belong to the real tokenizer; point them at the synthetic one's.
        overrides = {}
        for field, role in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "pad")):
            overrides[field] = {"preset": spec.get(field), "checkpoint": ids[role]}
            config[field] = ids[role]
        overrides["reason"] = "bos/eos/pad ids point at the synthetic tokenizer's special tokens"
        generation = {
            "bos_token_id": ids["bos"],
            "eos_token_id": [ids["im_end"], ids["eos"]],
            "pad_token_id": ids["pad"],
        }
        _write_json(tmp / "generation_config.json", generation)
        tokenizer_note = {
            "kind": TOKENIZER_SETTINGS["kind"],
            "vocab_size": tokenizer.get_vocab_size(),
            "special_tokens": {role: [tok, ids[role]] for role, tok in specials.items()},
            "corpus_seed": TOKENIZER_SETTINGS["corpus_seed"],
        }
    config["dtype"] = dtype
    config.pop("torch_dtype", None)
    _write_json(tmp / "config.json", config)

    weights = _write_weights(tmp, dtype, seed, trust_remote_code=trust_remote_code, progress=progress)
    _write_json(
        tmp / MARKER,
        {
            "builder_version": BUILDER_VERSION,
            "preset": preset,
            "hash": key,
            "dtype": dtype,
            "seed": seed,
            "synthetic": True,
            "note": "random weights: shapes, load time, memory and speed are real; quality metrics are not.",
            "tokenizer": tokenizer_note,
            "config_overrides": overrides,
            "weights": weights,
        },
    )


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _corpus() -> Iterator[str]:
    """Deterministic text with a Zipf-ish mix of real and pseudo words, enough for a 4k-token BPE."""
    rng = random.Random(TOKENIZER_SETTINGS["corpus_seed"])
    onsets, nuclei = _ONSETS.split(), _NUCLEI.split()
    pseudo: set[str] = set()
    while len(pseudo) < TOKENIZER_SETTINGS["pseudo_words"]:
        syllables = rng.randint(1, 3)
        pseudo.add(
            "".join(rng.choice(onsets) + rng.choice(nuclei) + rng.choice(_CODAS) for _ in range(syllables))
        )
    words = _COMMON_WORDS.split() + sorted(pseudo)
    last = len(words) - 1
    produced = 0
    while produced < TOKENIZER_SETTINGS["corpus_chars"]:
        parts = []
        for _ in range(rng.randint(4, 14)):
            r = rng.random()
            if r < 0.5:
                parts.append(words[min(int(rng.paretovariate(1.1)) - 1, last)])
            elif r < 0.93:
                parts.append(rng.choice(words))
            elif r < 0.98:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 6))))
            else:
                parts.append(rng.choice(_EXTRAS))
        line = " ".join(parts).capitalize() + rng.choice(".....?!,;:")
        produced += len(line) + 1
        yield line


def _train_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TOKENIZER_SETTINGS["special_tokens"].values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return tokenizer


def _write_tokenizer(out: Path, tokenizer: Any, *, model_max_length: int) -> None:
    """tokenizer.json plus a tokenizer_config.json in the long-standing layout (chat template inside),
    written by hand so it does not depend on which transformers version builds or loads it."""
    tokenizer.save(str(out / "tokenizer.json"))
    specials = TOKENIZER_SETTINGS["special_tokens"]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": specials["bos"],
        "eos_token": specials["eos"],
        "pad_token": specials["pad"],
        # transformers 5 loads model-type tokenizer classes for some types (qwen2 -> Qwen2Tokenizer) whose
        # default unk "<|endoftext|>" would be appended as an id past the model's vocabulary.
        "unk_token": None,
        "additional_special_tokens": [specials["im_start"], specials["im_end"]],
        "added_tokens_decoder": {
            str(tokenizer.token_to_id(tok)): {
                "content": tok,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for tok in specials.values()
        },
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    _write_json(out / "tokenizer_config.json", config)


def _tensor_seed(seed: int, name: str) -> int:
    """Each tensor's own seed, so its values do not depend on build order or sharding."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _write_weights(
    out: Path, dtype: str, seed: int, *, trust_remote_code: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Write random weights shard by shard, a block of rows at a time, straight in `dtype`.

    Names and shapes come from the model built on the meta device (no memory), so they are exactly
    what transformers expects; tied parameters (lm_head when embeddings are tied) are written once.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if sys.byteorder != "little":
        raise CheckpointError("safetensors files are little-endian and this host is not.")
    target = getattr(torch, dtype)
    try:
        config = AutoConfig.from_pretrained(out, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                config, dtype=target, trust_remote_code=trust_remote_code
            )
    except (ValueError, KeyError) as exc:  # an unknown model_type, or a config that is not a causal LM
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"transformers cannot build a causal language model from this config.json ({first}); "
            "loadbench measures models AutoModelForCausalLM knows."
        ) from None
    tied = set(getattr(model, "all_tied_weights_keys", None) or {}) if config.tie_word_embeddings else set()
    tensors: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if name in tied or id(t) in seen:
            continue
        seen.add(id(t))
        tensors.append((name, t))
    std = float(getattr(config, "initializer_range", 0.02))
    codes = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}
    for name, t in tensors:
        if t.dtype not in codes:
            raise CheckpointError(f"parameter {name!r} has dtype {t.dtype}, which the builder cannot write.")

    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, t))
        size += nbytes
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    )

    weight_map: dict[str, str] = {}
    total = 0
    planned = sum(t.numel() * t.element_size() for _, t in tensors)
    if progress is not None:
        progress(0, planned)
    for fname, shard in zip(names, shards, strict=True):
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, t in shard:
            nbytes = t.numel() * t.element_size()
            header[name] = {
                "dtype": codes[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            weight_map[name] = fname
        total += offset
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # safetensors aligns the data to 8 bytes
        with (out / fname).open("wb") as fh:
            fh.write(struct.pack("<Q", len(blob)))
            fh.write(blob)
            for name, t in shard:
                for block in _random_blocks(name, t, seed, std):
                    fh.write(block.contiguous().view(torch.uint8).numpy().data)
                if progress is not None:
                    progress(total - offset + header[name]["data_offsets"][1], planned)
    if len(names) > 1:
        _write_json(
            out / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": weight_map},
        )
    return {
        "init": "normal(0, initializer_range) for matrices, ones for norm weights, zeros for biases",
        "initializer_range": std,
        "num_parameters": sum(t.numel() for _, t in tensors),
        "total_bytes": total,
        "files": names,
        "tied": sorted(tied),
    }


def _random_blocks(name: str, meta: Any, seed: int, std: float) -> Iterator[Any]:
    """The values of one tensor, as blocks of whole rows, drawn from a generator seeded by its name."""
    import torch

    shape = tuple(meta.shape)
    if not shape:
        shape = (1,)
    rows = shape[0]
    per_row = max(1, meta.numel() // max(rows, 1))
    step = max(1, _CHUNK_ELEMENTS // per_row)
    gen = torch.Generator().manual_seed(_tensor_seed(seed, name))
    for start in range(0, rows, step):
        block = torch.empty((min(step, rows - start), *shape[1:]), dtype=meta.dtype)
        if name.endswith("bias") or not meta.is_floating_point():
            block.zero_()
        elif meta.dim() >= 2:
            block.normal_(0.0, std, generator=gen)
        else:
            block.fill_(1.0)  # norm weights
        yield block
