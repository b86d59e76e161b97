"""Hugging Face cache layouts for tests: models--ORG--NAME/refs/<rev> and snapshots/<sha>/, offline.

huggingface_hub resolves an offline snapshot from refs/<revision> (a commit sha) and the snapshot
folder of that sha; real caches link snapshot files to blobs/, which resolution does not need.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

_COMMON = {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512, "max_position_embeddings": 512}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "mistral": {
        **_COMMON,
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "sliding_window": None,
        "torch_dtype": "bfloat16",
    },
    "qwen3_moe": {
        **_COMMON,
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
    "gemma": {
        **_COMMON,
        "architectures": ["GemmaForCausalLM"],
        "model_type": "gemma",
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "torch_dtype": "bfloat16",
    },
    "llama": {
        **_COMMON,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "torch_dtype": "float32",
    },
}


def add_snapshot(
    cache: Path,
    repo_id: str,
    files: dict[str, Any] | Path,
    *,
    revision: str = "main",
    sha: str = "0123456789abcdef0123456789abcdef01234567",
) -> Path:
    """Put a snapshot of `repo_id` into the hub cache `cache`: `files` maps names to JSON content (or
    bytes), or is a directory whose files are copied. Returns the snapshot directory."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(sha)
    if isinstance(files, Path):
        for f in files.iterdir():
            if f.is_file():
                shutil.copyfile(f, snap / f.name)
    else:
        for name, content in files.items():
            data = content if isinstance(content, bytes) else json.dumps(content).encode()
            (snap / name).write_bytes(data)
    return snap
