"""Fault row 6 of issue 12: what used to end in a traceback is one sentence naming the file or flag, and a
bad config value fails its cell, not the run."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import CheckpointError
from bench.measure.outcome import CellOutcome
from bench.plan.checkpoints import checkpoint_fingerprint, make_checkpoint
from bench.plan.matrix import MatrixSpec
from bench.plan.planning import make_plan
from bench.run.compose import ModelFacts, compose_record
from tests.faults.helpers import ONE_CELL, cli_env


@pytest.fixture(scope="module")
def tiny_checkpoint() -> Path:
    return make_checkpoint("tiny-llama")


@pytest.fixture
def damaged(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    return copy


def _one_sentence(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("loadbench") and "\n" not in err and "Traceback" not in err, err
    return err


def test_huge_safetensors_header_length_is_a_sentence(
    damaged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = next(damaged.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 0x7FFF_FFFF_FFFF_FFFF) + data[8:])  # was: OverflowError
    assert checkpoint_fingerprint(
        damaged
    )  # planned; the cell loading it ends `error` (as truncated weights do)
    assert main(["plan", "--model", str(damaged)]) == 0
    weights.write_bytes(struct.pack("<Q", 0x7FFF_FFFF_FFFF_FFFF) + b"garbage")
    with pytest.raises(CheckpointError, match="no safetensors header"):
        checkpoint_fingerprint(damaged)
    assert main(["plan", "--model", str(damaged)]) == 2
    assert weights.name in _one_sentence(capsys)


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"{not json", "is not valid JSON"), (b'{"a": "\xff\xfe"}', "is not UTF-8")],
)
def test_bad_config_json_names_the_file(
    damaged: Path, content: bytes, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (damaged / "config.json").write_bytes(content)
    assert main(["plan", "--model", str(damaged)]) == 2
    err = _one_sentence(capsys)
    assert "config.json" in err and words in err


def test_compare_out_a_directory_is_a_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path)]) == 2
    assert "is a directory" in _one_sentence(capsys)
    assert tmp_path.is_dir()


def test_wrong_typed_config_value_fails_the_cell_not_the_run(tiny_checkpoint: Path) -> None:
    """compose_record runs in the parent: a config.json value it cannot read used to abort the run there."""
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["hidden_size"] = "sixty-four"
    from bench.plan.capabilities import probe_cached

    cell = make_plan(MatrixSpec(dtype=("float32",)), probe_cached().host).cells[0]
    model = ModelFacts(config, "cpu")
    ok = compose_record(cell, CellOutcome("ok", metrics={"prefill.tokens_per_s": 1.0}), model=model)
    assert ok["status"] == "error" and "config.json cannot be used" in ok["reason"]
    assert ok["error.type"] and ok["error.message"]
    failed = compose_record(cell, CellOutcome("error", "the model did not load"), model=model)
    assert failed["status"] == "error" and failed["reason"].startswith("the model did not load; ")
    skipped = compose_record(cell, CellOutcome("skipped", "a rule"), model=model, host="h")
    assert skipped["status"] == "skipped" and "config.json" in skipped["reason"]


@pytest.mark.slow
def test_wrong_typed_config_value_every_cell_gets_its_record(damaged: Path, tmp_path: Path) -> None:
    config = json.loads((damaged / "config.json").read_text())
    config["hidden_size"] = "sixty-four"
    (damaged / "config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    args = [*ONE_CELL, "--attn", "sdpa,eager", "--model", str(damaged), "--out", str(out), "--no-live"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len({r["cell_id"] for r in records}) == 2  # the rest of the matrix ran
    assert {r["status"] for r in records} == {"error"} and all(r["reason"] for r in records)


@pytest.mark.slow
def test_full_disk_during_the_report_keeps_the_records_and_says_so(tmp_path: Path) -> None:
    """A real write failure (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) while the report is written:
    the records are fsynced before it, so the run says they are safe and exits non-zero with a sentence."""
    import resource

    out = tmp_path / "run"
    limit = 60_000  # above records.jsonl and run.json of one cell, below records.parquet

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", *ONE_CELL, "--out", str(out), "--no-live"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=small_files,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "the run's records are safe" in last and "loadbench report" in last
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok"]
