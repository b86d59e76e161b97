"""bench.measure.reference_file: the run's parent finds a cached quality reference as the worker would, and its
whole path (CLI, session, executor, node, runner, store) never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.measure.reference_file import (
    DEFAULT_MAX_TOKENS,
    REFERENCE,
    cached_reference,
    reference_meta,
    wanted_meta,
)
from bench.plan.checkpoints import checkpoint_fingerprint

ROOT = Path(__file__).resolve().parents[1]
torch = pytest.importorskip("torch")


def _write(path: Path, checkpoint: Path, **meta: Any) -> Path:
    """A small reference file as save_reference writes it, for `checkpoint` unless `meta` says otherwise."""
    from bench.measure.quality import save_reference

    want = wanted_meta(checkpoint_fingerprint(checkpoint), REFERENCE["cpu"], DEFAULT_MAX_TOKENS)
    lp = torch.log_softmax(torch.randn(6, 11), -1)
    ids = torch.arange(6)
    return save_reference(path, lp, {**want, "tokens": 6, "device": "cpu", **meta}, ids=ids)


def _worker_answer(checkpoint: Path, path: Path) -> dict[str, Any]:
    from bench.measure.quality import reference_task

    return reference_task({"checkpoint_path": str(checkpoint), "path": str(path), "device": "cpu"})


def test_a_cached_reference_is_answered_as_the_worker_answers(tiny_llama: Path, tmp_path: Path) -> None:
    path = _write(tmp_path / "ref.safetensors", tiny_llama)
    mtime = path.stat().st_mtime_ns
    found = cached_reference(tiny_llama, "cpu", path)
    worker = _worker_answer(tiny_llama, path)
    assert path.stat().st_mtime_ns == mtime  # the worker kept it too: a valid cache entry
    assert found is not None and found["seconds"] >= 0
    assert {k: v for k, v in found.items() if k != "seconds"} == {
        k: v for k, v in worker.items() if k != "seconds"
    }
    assert found == {**found, "path": str(path), "tokens": 6, "knobs": REFERENCE["cpu"]}


def test_the_metadata_is_read_as_the_torch_side_reads_it(tiny_llama: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    path = _write(tmp_path / "ref.safetensors", tiny_llama)
    meta, shape = reference_meta(path)
    with safe_open(str(path), framework="pt") as f:
        assert shape == list(f.get_slice("logprobs").get_shape())
        assert meta == json.loads(f.metadata()["loadbench.quality"])


@pytest.mark.parametrize(
    "change",
    [
        "missing",
        "fingerprint",
        "knobs",
        "max_tokens",
        "truncated",
        "longer",
        "not safetensors",
        "no metadata",
    ],
)
def test_anything_but_a_valid_matching_file_is_left_to_the_worker(
    change: str, tiny_llama: Path, tmp_path: Path
) -> None:
    path = tmp_path / "ref.safetensors"
    if change == "fingerprint":
        _write(path, tiny_llama, fingerprint="another checkpoint")
    elif change == "knobs":
        _write(path, tiny_llama, knobs={**REFERENCE["cpu"], "attn": "sdpa"})
    elif change == "max_tokens":
        _write(path, tiny_llama, max_tokens=512)
    elif change in ("truncated", "longer"):
        raw = _write(path, tiny_llama).read_bytes()
        path.write_bytes(raw[:-4] if change == "truncated" else raw + b"\0")
    elif change == "not safetensors":
        path.write_bytes(b"\xff" * 64)
    elif change == "no metadata":
        from safetensors.torch import save_file

        save_file({"logprobs": torch.zeros(2, 3)}, str(path))
    assert cached_reference(tiny_llama, "cpu", path) is None
    if change in ("truncated", "longer", "not safetensors"):  # safetensors refuses these files as well
        from safetensors import SafetensorError, safe_open

        with pytest.raises(SafetensorError), safe_open(str(path), framework="pt") as f:
            f.keys()


def test_the_parent_finds_a_cached_reference_without_torch(tiny_llama: Path, tmp_path: Path) -> None:
    """In a fresh interpreter: every module of the parent's run path, then the node's quality reference step
    on a cached file (no worker, so no multiprocessing context is needed), and torch is still not imported."""
    cache = tmp_path / "cache"
    fingerprint = checkpoint_fingerprint(tiny_llama)
    _write(cache / "quality" / f"{fingerprint}-cpu.safetensors", tiny_llama)
    code = f"""
import json, sys
from pathlib import Path
import bench.cli, bench.commands.run, bench.run.session, bench.run.executor, bench.run.runner
import bench.run.store, bench.run.compose, bench.run.accounting
from bench.run.node import prepare_quality_reference
ref = prepare_quality_reference(None, Path({str(tiny_llama)!r}), {fingerprint!r}, None, Path("q.log"), 60.0)
print(json.dumps({{"ref": ref, "loaded": [m for m in ("torch", "transformers") if m in sys.modules]}}))
"""
    env = {**os.environ, "LOADBENCH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout.splitlines()[-1])
    assert answer["loaded"] == []
    assert answer["ref"]["tokens"] == 6 and answer["ref"]["path"].endswith(f"{fingerprint}-cpu.safetensors")
    assert "the cached float32/none/eager reference" in out.stderr


@pytest.mark.slow
def test_loadbench_run_never_imports_torch_in_its_parent(
    tiny_llama: Path, ckpt_cache: Path, tmp_path: Path
) -> None:
    """A real one-cell `loadbench run` on a built checkpoint (its reference computed by a worker, or found
    cached, then found cached by a second run): the cells, the template and the probes import torch, the
    parent process never does. (Building a checkpoint on a cache miss is the parent's, and imports it.)"""
    cache = ckpt_cache  # where tiny_llama was built: the run finds it there
    args = ["run", "--dtype", "float32", "--quant", "none", "--attn", "sdpa", "--grad-ckpt", "off"]
    args += ["--workloads", "prefill", "--no-live"]
    code = """
import json, sys
from bench.cli import main
code = main(sys.argv[1:])
print("PARENT " + json.dumps([m for m in ("torch", "transformers") if m in sys.modules]))
sys.exit(code)
"""
    env = {**os.environ, "LOADBENCH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    for run, saying in (("first", ""), ("second", "the cached")):
        cmd = [sys.executable, "-c", code, *args, "--out", str(tmp_path / run)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        assert "PARENT []" in out.stdout, out.stdout
        assert f"quality reference: {saying}" in out.stderr, out.stderr
        meta = json.loads((tmp_path / run / "run.json").read_text())
        assert "path" in meta["quality_reference"], meta["quality_reference"]
