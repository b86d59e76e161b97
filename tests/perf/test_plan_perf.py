"""Benchmark: `plan` of a 24B model reads its config only (<= 2 s, nothing written). Run with `nox -s perf`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.plan.matrix import MatrixSpec
from bench.plan.planning import make_plan
from loader.host import HostCapabilities
from tests.hf_cache import add_snapshot

pytestmark = pytest.mark.perf
ROOT = Path(__file__).resolve().parents[2]
CPU = HostCapabilities(bitsandbytes_version="0.50", bitsandbytes_devices=("cpu",))

# mistralai/Mistral-Small-24B-Instruct-2501's config.json (the open-r1 recipe's model), shapes as published.
MISTRAL_24B = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 5120,
    "intermediate_size": 32768,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 131072,
    "max_position_embeddings": 32768,
    "rope_theta": 100000000.0,
    "rms_norm_eps": 1e-05,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}
REPO = "mistralai/Mistral-Small-24B-Instruct-2501"


def test_plan_of_a_24b_config_is_fast_and_writes_nothing(benchmark, tmp_path, monkeypatch) -> None:
    hub, lb = tmp_path / "hub", tmp_path / "lb"
    add_snapshot(hub, REPO, {"config.json": MISTRAL_24B})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("LOADBENCH_CACHE", str(lb))
    spec = MatrixSpec(model=REPO, dtype=("bfloat16",), quant=("none", "nf4"), grad_ckpt=(False, True))

    # a fresh interpreter, imports included (the host probe is cached separately and not counted)
    code = (
        "import time; t = time.perf_counter()\n"
        "from bench.plan.matrix import MatrixSpec\nfrom bench.plan.planning import make_plan\n"
        "from loader.host import HostCapabilities\n"
        f"make_plan(MatrixSpec(model={REPO!r}), HostCapabilities())\n"
        "print(time.perf_counter() - t)\n"
    )
    fresh = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
    )
    start = time.perf_counter()
    plan = benchmark(make_plan, spec, CPU)
    benchmark.extra_info.update({"fresh_process_s": fresh, "cells": len(plan.cells)})
    assert plan.model is not None and plan.model.weights == "random" and not plan.model.built
    assert not lb.exists(), "plan wrote to the loadbench cache"
    assert benchmark.stats.stats.median <= 2.0 and time.perf_counter() - start < 60
    assert fresh <= 2.0, f"a fresh `plan` of a 24B config took {fresh:.2f} s"
