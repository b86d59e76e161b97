"""bench.analysis.recommend: the fastest fitting cell, the margin, "nothing fits", objectives, sources, the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from bench.analysis import recommend
from bench.commands import recommend as recommend_command
from tests.test_report import H100_RUN, make_record, make_run

GiB = 1 << 30


def _train_cell(quant: str, grad_ckpt: bool, tokens_per_s: float, reserved_gib: float) -> dict[str, Any]:
    """A GPU cell whose train throughput and torch reserved peak are exactly as given."""
    return make_record(
        quant=quant,
        grad_ckpt=grad_ckpt,
        device="cuda",
        **{
            "train.tokens_per_s": tokens_per_s,
            "train.tokens_per_s.p10": tokens_per_s * 0.95,
            "train.tokens_per_s.p90": tokens_per_s * 1.05,
            "mem.train.torch_reserved_bytes": int(reserved_gib * GiB),
            "decode.tokens_per_s": tokens_per_s / 100,
            "mem.prefill.torch_reserved_bytes": int(reserved_gib * GiB / 4),
            "mem.decode.torch_reserved_bytes": int(reserved_gib * GiB / 3),
        },
    )


@pytest.fixture
def run(tmp_path: Path) -> Path:
    records = [
        _train_cell("none", False, 12_000.0, 20.0),  # fastest, biggest
        _train_cell("none", True, 8_000.0, 14.0),
        _train_cell("nf4", True, 3_000.0, 6.0),  # smallest
        make_record(quant="8bit", status="oom", reason="CUDA out of memory during train"),
        make_record(attn="flash_attention_2", status="skipped", reason="flash-attn is not installed"),
    ]
    return make_run(tmp_path / "run", records)


def test_picks_the_fastest_cell_that_fits_with_a_runner_up(run: Path) -> None:
    rec = recommend.recommend(run, 24 * GiB, "train")
    assert rec.fits and rec.best is not None and rec.runner_up is not None
    assert (rec.best.knobs["quant"], rec.best.knobs["grad_ckpt"]) == ("none", False)
    assert (rec.runner_up.knobs["quant"], rec.runner_up.knobs["grad_ckpt"]) == ("none", True)
    assert rec.best.memory_source == "torch reserved peak"
    assert rec.best.memory_column == "mem.train.torch_reserved_bytes"
    assert rec.candidates == 3 and rec.fitting == 3
    text = " ".join(rec.reasons)
    assert (
        "unquantized + no checkpointing: 50 % faster than checkpointing, fits with 1.60 GiB to spare." in text
    )
    assert "21.60 GiB (24.00 GiB less a 10 % margin)" in text


def test_tied_cells_are_called_tied_not_faster(tmp_path: Path) -> None:
    fast, slower = _train_cell("none", False, 12_000.0, 20.0), _train_cell("none", True, 10_000.0, 14.0)
    fast["train.tokens_per_s.p10"], slower["train.tokens_per_s.p90"] = 9_000.0, 12_500.0  # overlapping
    rec = recommend.recommend(make_run(tmp_path / "run", [fast, slower]), 24 * GiB, "train")
    text = " ".join(rec.reasons)
    assert "tied with checkpointing (their p10–p90 tok/s intervals overlap" in text and "faster" not in text


def test_a_cpu_budget_is_ram_and_inference_speaks_of_the_kv_cache(tmp_path: Path) -> None:
    cells = []
    for ckpt, cache, rate in ((False, True, 200.0), (True, False, 50.0)):
        cell = make_record(grad_ckpt=ckpt, device="cpu")
        cell.update({"decode.tokens_per_s": rate, "decode.use_cache": cache, "mem.decode.rss_bytes": GiB})
        cell.update({"decode.tokens_per_s.p10": rate * 0.9, "decode.tokens_per_s.p90": rate * 1.1})
        cells.append(cell)
    rec = recommend.recommend(make_run(tmp_path / "run", cells), 24 * GiB, "infer")
    text = " ".join(rec.reasons)
    assert "within RAM 21.60 GiB" in text and "VRAM" not in text
    assert "KV cache on" in text and "KV cache off" in text and "checkpointing" not in text


def test_the_margin_is_respected(run: Path) -> None:
    """20 GiB fits 22 GiB with no margin, but not 22 GiB less 10 % (19.8 GiB)."""
    assert recommend.recommend(run, 22 * GiB, "train", margin=0.0).best.peak_bytes == 20 * GiB
    rec = recommend.recommend(run, 22 * GiB, "train", margin=0.10)
    assert rec.best.peak_bytes == 14 * GiB
    assert any(
        "The fastest, unquantized + no checkpointing" in r and "does not fit" in r for r in rec.reasons
    )


def test_nothing_fits_names_the_smallest_peak(run: Path) -> None:
    rec = recommend.recommend(run, 4 * GiB, "train")
    assert not rec.fits and rec.best is None and rec.runner_up is None
    assert rec.smallest is not None and rec.smallest.peak_bytes == 6 * GiB
    assert rec.reasons == [
        "Nothing fits: the smallest train peak measured is 6.00 GiB (nf4 + checkpointing, torch reserved peak), "
        "over the budget of VRAM 3.60 GiB (4.00 GiB less a 10 % margin)."
    ]


def test_memory_and_balanced_objectives(run: Path) -> None:
    assert recommend.recommend(run, 24 * GiB, "train", objective="memory").best.knobs["quant"] == "nf4"
    balanced = recommend.recommend(run, 24 * GiB, "train", objective="balanced").best
    # tok/s per GiB: 600 (none, no ckpt), 571 (none, ckpt), 500 (nf4)
    assert (balanced.knobs["quant"], balanced.knobs["grad_ckpt"]) == ("none", False)


def test_infer_uses_decode_throughput_and_the_larger_of_prefill_and_decode_peaks(run: Path) -> None:
    rec = recommend.recommend(run, 6 * GiB, "infer", margin=0.0)
    assert rec.best.throughput_metric == "decode.tokens_per_s"
    assert (
        rec.best.memory_column == "mem.decode.torch_reserved_bytes"
    )  # decode peak is a third, prefill a quarter
    assert rec.best.peak_bytes == int(14 * GiB / 3)


def test_a_cpu_run_falls_back_to_rss_and_says_so(tmp_path: Path) -> None:
    records = [
        make_record(attn=a, speed=s, memory_mib=m) for a, s, m in (("eager", 1.0, 400), ("sdpa", 2.0, 500))
    ]
    rec = recommend.recommend(make_run(tmp_path / "cpu", records), "1GiB", "train")
    assert rec.best.knobs["attn"] == "sdpa" and rec.best.memory_source == "RSS peak"
    assert "RSS peak, mem.train.rss_bytes" in rec.reasons[0]


def test_the_committed_h100_run() -> None:
    rec = recommend.recommend(H100_RUN, 24 * GiB, "train")
    assert (rec.best.knobs["quant"], rec.best.knobs["grad_ckpt"]) == ("none", True)
    assert rec.best.memory_source == "torch reserved peak"


def test_a_run_without_the_task_says_what_to_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", [make_record(workloads=("prefill", "decode"))])
    rec = recommend.recommend(run, 24 * GiB, "train")
    assert rec.best is None and "run the train workload(s) first" in rec.reasons[0]


# --- command line ---------------------------------------------------------------------------------------


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="loadbench")
    recommend_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["recommend", *argv])
    return args.func(args)


def _one_sentence(err: str) -> str:
    err = err.strip()
    assert err.startswith("loadbench: ") and "\n" not in err and err.endswith(".")
    return err


@pytest.mark.parametrize("size", ["24GiB", "26GB", "24G", "24576MiB"])
def test_cli_accepts_sizes_and_prints_the_pick(
    run: Path, size: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(str(run), "--vram", size, "--task", "train") == 0
    out = capsys.readouterr().out
    assert "pick" in out and "runner-up" in out and "unquantized + no checkpointing" in out


@pytest.mark.parametrize("size", ["24 parsecs", "lots", "-3GiB", "", "24"])
def test_cli_bad_vram_is_one_sentence_and_exit_2(
    run: Path, size: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused by argparse at the edge (usage, then one sentence naming --vram), before the run is read."""
    with pytest.raises(SystemExit) as exit_info:
        _cli(str(run), f"--vram={size}", "--task", "train")
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --vram: " in last and last.endswith(".")
    if size == "24":
        assert "add a unit, e.g. 24GiB" in last


def test_cli_bad_margin_and_not_a_run_exit_2(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(str(run), "--vram", "24GiB", "--task", "train", "--margin", "1.5") == 2
    assert "--margin" in _one_sentence(capsys.readouterr().err)
    assert _cli(str(tmp_path / "nothing"), "--vram", "24GiB", "--task", "infer") == 2
    assert "not a loadbench run directory" in _one_sentence(capsys.readouterr().err)


def test_cli_nothing_fits_still_exits_0(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(str(run), "--vram", "2GiB", "--task", "train", "--margin", "10%") == 0
    assert "Nothing fits" in capsys.readouterr().out
