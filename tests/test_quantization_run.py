"""Runs of the on-the-fly quantizers on this CPU, end to end: each CPU-capable value gives an `ok` record
(load, prefill, LoRA train, decode, quality, memory estimate), a value transformers refuses on the CPU is
`unsupported` with its message, and `loadbench run` shows each beside bitsandbytes nf4 in one report."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.plan.estimate.arch import arch_from_config
from bench.plan.estimate.terms import weight_bytes
from bench.plan.matrix import MatrixSpec, Shape
from bench.run.session import RunRequest, run_matrix
from bench.run.store import FINAL_STATUSES, RunStore
from loader.quantization import QUANT_EXTRA

pytestmark = pytest.mark.slow

CPU_VALUES = ("torchao-int8", "quanto-int8", "quanto-int4")  # what runs on a CPU (docs/quantization.md)


def _require(*dists: str) -> None:
    for dist in dists:
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{dist} is not installed ({QUANT_EXTRA})")


def _records(out: Path) -> dict[str, dict]:
    return {r["quant"]: r for r in RunStore.open(out).records() if r["status"] in FINAL_STATUSES}


def test_each_cpu_capable_value_gives_an_ok_record_with_quality_and_estimates(
    tiny_llama: Path, tmp_path: Path
) -> None:
    _require("torchao", "optimum-quanto", "hqq")
    spec = MatrixSpec(
        model=str(tiny_llama),
        dtype=("bfloat16",),
        quant=("none", *CPU_VALUES, "hqq-4bit"),
        attn=("sdpa",),
        workloads=("prefill", "train", "decode"),
        shape=Shape(batch=1, seq=16, new_tokens=4),
        name="quant",
    )
    out = tmp_path / "run"
    run_matrix(RunRequest(spec, out=out, timeout_s=120, budget_s=0.1, min_samples=3, live=False))
    records = _records(out)
    assert set(records) == {"none", *CPU_VALUES, "hqq-4bit"}
    arch = arch_from_config(json.loads((tiny_llama / "config.json").read_text()))
    for quant in CPU_VALUES:
        r = records[quant]
        assert r["status"] == "ok", (quant, r.get("reason"))
        assert r["prefill.tokens_per_s"] > 0 and r["decode.tokens_per_s"] > 0
        assert r["train.tokens_per_s"] > 0 and r["train_mode"] == "lora"
        assert r["quality.kl"] is not None and r["quality.kl"] >= 0 and 0 < r["quality.top1_agree"] <= 1
        for phase in ("load", "prefill", "train", "decode"):
            assert r[f"mem.{phase}.estimate_bytes"] > 0
        # the footprint is what the library stores, and the estimate's weights term predicts it exactly
        assert r["mem.footprint_bytes"] == weight_bytes(arch, "bfloat16", quant)
        assert r["mem.footprint_bytes"] < records["none"]["mem.footprint_bytes"]
    hqq = records["hqq-4bit"]
    assert hqq["status"] == "unsupported"
    assert hqq["reason"].startswith("transformers refused quantization='hqq-4bit': ")


def test_loadbench_run_shows_each_value_beside_nf4_in_one_report(tiny_llama: Path, tmp_path: Path) -> None:
    """The issue's command on this CPU host (without the attention pins and decode modes of the other
    half of issue 21): `plan` gives every cell a verdict, `run` an `ok` record for the CPU-capable ones."""
    _require("torchao", "optimum-quanto", "hqq")
    quant = "none,nf4,torchao-int8,hqq-4bit,quanto-int8"
    common = ["--model", str(tiny_llama), "--quant", quant, "--dtype", "bfloat16", "--attn", "sdpa"]
    assert main(["plan", *common]) == 0
    out = tmp_path / "run"
    args = ["run", *common, "--seq", "16", "--new-tokens", "4", "--budget", "0.1", "--min-samples", "3"]
    main([*args, "--out", str(out), "--no-live"])
    records = _records(out)
    assert set(records) == set(quant.split(","))
    for value in ("none", "nf4", "torchao-int8", "quanto-int8"):
        assert records[value]["status"] == "ok", (value, records[value].get("reason"))
        assert records[value]["quality.kl"] is not None
    assert records["hqq-4bit"]["status"] == "unsupported"
    report = (out / "report.md").read_text()
    for value in quant.split(","):
        assert f"| {value} " in report or f"/{value}/" in report, value
    # the readers take the new values as they take bitsandbytes'
    assert main(["recommend", str(out), "--vram", "4GiB", "--task", "train"]) == 0
    assert main(["compare", str(out), str(out)]) == 0
