"""Shared fixtures: synthetic checkpoints built once per test session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ckpt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ckpt-cache")


@pytest.fixture(scope="session")
def tiny_llama(ckpt_cache: Path) -> Path:
    from bench.plan.checkpoints import make_checkpoint

    return make_checkpoint("tiny-llama", cache_dir=ckpt_cache)


@pytest.fixture(scope="session")
def tiny_qwen2(ckpt_cache: Path) -> Path:
    from bench.plan.checkpoints import make_checkpoint

    return make_checkpoint("tiny-qwen2", cache_dir=ckpt_cache)


@pytest.fixture(scope="session")
def recipes_dir() -> Path:
    here = Path(__file__).resolve().parents[1]
    for candidate in (here.parent / "shared" / "recipes", here / "tests" / "data" / "recipes"):
        if candidate.is_dir():
            return candidate
    pytest.skip("no recipes directory (../shared/recipes) beside this checkout")
