"""Synthetic checkpoints: an architecture preset becomes a local directory transformers can load.

No model hub is assumed. Load time, memory and throughput depend on shapes, not weight values, so a
checkpoint with the real config, random weights and a small locally trained tokenizer gives true
numbers for everything but quality (quality metrics need real weights and must say so).

Checkpoints are cached under a hash of everything that determines their bytes, built in a temporary
directory beside the destination and renamed into place, so a reader never sees a half-written one.
torch, transformers and tokenizers are imported only when something is built: a cache hit is cheap.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import CheckpointError
from bench.plan.synthetic import BUILDER_VERSION, MARKER, build, cache_key, canonical_json, weights_dtype

__all__ = [
    "BUILDER_VERSION",
    "MARKER",
    "PRESET_DIR",
    "CheckpointError",
    "build_into",
    "cache_root",
    "checkpoint_fingerprint",
    "checkpoint_weights",
    "list_presets",
    "load_preset",
    "make_checkpoint",
    "marker_key",
    "read_json",
]

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets" / "arch"


def list_presets() -> list[str]:
    """The architecture presets shipped in bench/presets/arch, by name."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> dict[str, Any]:
    """The config.json dict of a preset; names are checked so a typo is not a path lookup."""
    names = list_presets()
    if name not in names:
        raise CheckpointError(f"unknown architecture preset {name!r}; choose one of: {', '.join(names)}.")
    return json.loads((PRESET_DIR / f"{name}.json").read_text(encoding="utf-8"))


def make_checkpoint(
    preset: str,
    out_dir: str | Path | None = None,
    *,
    dtype: str | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Path:
    """Build (or find) a synthetic checkpoint of `preset` and return its directory.

    Without `out_dir` the checkpoint lives in the cache (`cache_dir`, else $LOADBENCH_CACHE, else
    ~/.cache/loadbench) under checkpoints/<preset>-<hash16>, and an existing one is returned without
    any torch work. With `out_dir` it is built there; an existing non-empty `out_dir` is refused unless
    it already holds this very checkpoint. `dtype` overrides the preset's; `seed` picks the weights.
    """
    spec = load_preset(preset)
    dtype = weights_dtype(spec, dtype)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise CheckpointError(f"seed {seed!r} must be an integer in [0, 2**63).")
    key = cache_key(preset, spec, dtype, seed)

    if out_dir is None:
        dest = cache_root(cache_dir) / "checkpoints" / f"{preset}-{key}"
        if (dest / MARKER).is_file():
            return dest
        if dest.exists():
            raise CheckpointError(
                f"cache entry {str(dest)!r} exists but has no {MARKER}, so it is not a complete checkpoint; "
                "delete it and build again."
            )
    else:
        dest = Path(out_dir).expanduser().resolve()
        if dest.exists():
            if not dest.is_dir():
                raise CheckpointError(f"out_dir {str(dest)!r} is a file, not a directory.")
            if any(dest.iterdir()):
                if marker_key(dest) == key:
                    return dest
                raise CheckpointError(
                    f"out_dir {str(dest)!r} is not empty; pass an empty or new directory so no files are mixed."
                )

    return build_into(dest, key, lambda tmp: build(tmp, preset, spec, dtype, seed, key))


def build_into(dest: Path, key: str, write: Callable[[Path], None]) -> Path:
    """Run `write` on a temporary directory beside `dest`, then rename it into place (atomic publish)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache must be readable by others
        write(tmp)
        return _publish(tmp, dest, key)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: Path) -> Any:
    """A checkpoint's JSON file (config.json, loadbench.json); unreadable, non-UTF-8 or invalid JSON is one
    sentence naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{str(path)!r} cannot be read: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{str(path)!r} is not UTF-8 text, so it is not a valid JSON file.") from None
    except ValueError as exc:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({exc}).") from None


def checkpoint_fingerprint(path: str | Path) -> str:
    """A short stable hash of what a checkpoint is, cheap enough to compute per cell.

    It covers config.json (canonical JSON), each safetensors file's name, size and header (names,
    dtypes, shapes, offsets) and loadbench.json when present, and reads no tensor data: so two builds
    with the same inputs agree, and a synthetic checkpoint's seed still changes it. Real checkpoints
    that differ only in weight values (same shapes) are not told apart.
    """
    root = Path(path)
    h = hashlib.sha256(b"loadbench-fingerprint-1\0")
    config = root / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{str(root)!r} has no config.json, so it is not a checkpoint.")
    h.update(canonical_json(read_json(config)))
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{str(root)!r} has no *.safetensors files to fingerprint.")
    for f in files:
        with f.open("rb") as fh:
            head = fh.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            # a damaged length field (0x7fff...) must not reach read() (OverflowError): read at most the file;
            # the cell that loads these weights then ends `error` ("weights file ... is corrupt")
            header = fh.read(min(length, f.stat().st_size))
        if not header.startswith(b"{"):
            raise CheckpointError(
                f"{str(f)!r} has no safetensors header, so the file is truncated or not safetensors."
            )
        h.update(f"\0{f.name}\0{f.stat().st_size}\0".encode())
        h.update(header)
    marker = root / MARKER
    if marker.is_file():
        h.update(b"\0" + canonical_json(read_json(marker)))
    return h.hexdigest()[:16]


def checkpoint_weights(path: str | Path) -> str:
    """ "random" for a checkpoint loadbench built (its MARKER says synthetic), else "real".

    A marker's string `weights` ("real" | "random") wins when a builder records one; an unreadable
    marker counts as random, so quality is never presented as real by mistake.
    """
    marker = Path(path) / MARKER
    if not marker.is_file():
        return "real"
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "random"
    if data.get("weights") in ("real", "random"):
        return str(data["weights"])
    return "random" if data.get("synthetic", True) else "real"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where loadbench caches what it builds: `cache_dir`, else $LOADBENCH_CACHE, else ~/.cache/loadbench."""
    if cache_dir is None:
        cache_dir = os.environ.get("LOADBENCH_CACHE") or Path.home() / ".cache" / "loadbench"
    return Path(cache_dir).expanduser().resolve()


def marker_key(path: Path) -> str | None:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8")).get("hash")
    except (OSError, ValueError):
        return None


def _publish(tmp: Path, dest: Path, key: str) -> Path:
    """Rename the finished build into place; if a concurrent builder won, keep theirs."""
    try:
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()  # an empty out_dir the caller made for us
        os.rename(tmp, dest)
        return dest
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise
    if marker_key(dest) == key:
        return dest
    raise CheckpointError(f"{str(dest)!r} was filled by someone else while this checkpoint was being built.")
