"""`loadbench cache list | clean`: only loadbench's own entries are listed and removed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.commands.cache import entries, parse_age
from bench.errors import SpecError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "lb"
    old = root / "checkpoints" / "tiny-llama-0000000000000000"
    new = root / "checkpoints" / "hf--org--m-1111111111111111"
    for d in (old, new):
        d.mkdir(parents=True)
        (d / "loadbench.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"x" * 1000)
    (root / "checkpoints" / ".hf--org--m-2222.tmp-abc").mkdir()
    (root / "checkpoints" / "not-ours").mkdir()  # no marker: a user's directory, never touched
    (root / "quality").mkdir()
    (root / "quality" / "fp-cpu.safetensors").write_bytes(b"q" * 10)
    (root / "notes.txt").write_text("mine")
    week_ago = time.time() - 8 * 86400
    os.utime(old / "loadbench.json", (week_ago, week_ago))
    monkeypatch.setenv("LOADBENCH_CACHE", str(root))
    return root


def test_list_shows_sizes_and_kinds(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny-llama-0000000000000000" in out and "quality reference" in out and "partial build" in out
    assert "not-ours" not in out and "notes.txt" not in out
    assert "4 entries" in out


def test_clean_older_than_removes_only_old_own_entries(cache: Path) -> None:
    assert main(["cache", "clean", "--older-than", "7d"]) == 0
    assert not (cache / "checkpoints" / "tiny-llama-0000000000000000").exists()
    assert (cache / "checkpoints" / "hf--org--m-1111111111111111").exists()
    assert main(["cache", "clean"]) == 0
    assert entries(cache) == []
    assert (cache / "checkpoints" / "not-ours").is_dir() and (cache / "notes.txt").is_file()


def test_bad_age_is_one_sentence(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_age("12h") == 12 * 3600 and parse_age("2w") == 14 * 86400
    with pytest.raises(SpecError, match="--older-than='week' is not an age"):
        parse_age("week")
    assert main(["cache", "clean", "--older-than", "soon"]) == 2
    assert "--older-than='soon'" in capsys.readouterr().err
