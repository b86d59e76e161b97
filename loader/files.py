"""Checks on the model's files before transformers reads them, so a bad path is one sentence."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from loader.errors import CheckpointInvalid

_PATHLIKE_PREFIXES = ("/", ".", "~")


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unreadable (truncated, bad header), or None. Reads only the header."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return "it is shorter than the 8-byte header length"
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                return f"its header claims {n} bytes but the file has {size - 8} after the length field"
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"its header cannot be parsed ({type(exc).__name__})"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if end != size - 8 - n:
        return f"its tensors need {end} data bytes but the file holds {size - 8 - n} (truncated or padded)"
    return None


def check_local_model_dir(path: Path) -> Path:
    """A local checkpoint directory that transformers can read: config.json present, weights intact."""
    if not path.is_dir():
        raise CheckpointInvalid(f"model_name_or_path {str(path)!r} is a file, not a checkpoint directory.")
    if not (path / "config.json").is_file():
        raise CheckpointInvalid(
            f"model_name_or_path {str(path)!r} has no config.json, so it is not a checkpoint."
        )
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointInvalid(
                f"{index} is not a valid safetensors index ({type(exc).__name__})."
            ) from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise CheckpointInvalid(
                f"checkpoint {str(path)!r} is missing weight shard(s): {', '.join(missing)}."
            )
    for weights in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise CheckpointInvalid(f"weights file {str(weights)!r} is corrupt: {problem}.")
    return path


def model_config_dir(model_name_or_path: str, revision: str, local_files_only: bool) -> Path | None:
    """The directory holding config.json: the local path, or the hub cache snapshot.

    Raises CheckpointInvalid for a missing local path, or for a hub id that is not cached while
    downloads are off (loadbench never reaches the network unless asked to).
    """
    path = Path(model_name_or_path).expanduser()
    if path.exists():
        return check_local_model_dir(path)
    if model_name_or_path.startswith(_PATHLIKE_PREFIXES) or model_name_or_path.count("/") > 1:
        raise CheckpointInvalid(f"model_name_or_path {model_name_or_path!r} does not exist.")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model_name_or_path, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached).parent
    if local_files_only:
        raise CheckpointInvalid(
            f"model_name_or_path {model_name_or_path!r} is neither a local directory nor in the Hugging Face "
            "cache, and downloads are off; pass a local path, build one with `loadbench checkpoint`, or set "
            "local_files_only=False."
        )
    return None
