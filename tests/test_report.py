"""bench.analysis.report: the frame, the four files, escaping, the plots, bad input, and the 10k-record budget.

Runs are built on disk as the runner writes them (run.json + records.jsonl) from records shaped like a
real CPU run's; one test renders a real run of the tiny model and one the committed H100 results.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import re
import shutil
import statistics
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.analysis import report
from bench.commands import report as report_command
from bench.run import store

ROOT = Path(__file__).resolve().parents[1]
H100_RUN = ROOT / "results" / "h100-2026-11-27"
XSS = "<script>alert(1)</script>"
MiB = 1 << 20
# (timed metric, samples) per workload, as the runner records them on CPU.
TIMED = {"prefill": ("latency_s", 50), "train": ("step_s", 5), "decode": ("tpot_s", 5)}
CPU_ONLY = "the torch CUDA allocator exists only on a GPU; see rss_bytes"


# --- building run directories ---------------------------------------------------------------------------


def _stats(name: str, samples: list[float]) -> dict[str, Any]:
    """A metric with the spread columns the runner writes: median, p10, p90, iqr, n, noisy, samples."""
    deciles = statistics.quantiles(samples, n=10)
    quartiles = statistics.quantiles(samples, n=4)
    return {
        name: statistics.median(samples),
        f"{name}.p10": deciles[0],
        f"{name}.p90": deciles[-1],
        f"{name}.iqr": quartiles[2] - quartiles[0],
        f"{name}.n": len(samples),
        f"{name}.noisy": False,
        f"{name}.samples": samples,
    }


def _memory(phase: str, rss: int, device: str) -> dict[str, Any]:
    out: dict[str, Any] = {f"mem.{phase}.rss_bytes": rss}
    for kind in ("torch_allocated_bytes", "torch_reserved_bytes", "nvml_process_bytes"):
        column = f"mem.{phase}.{kind}"
        if device == "cpu":
            out[column], out[f"{column}.reason"] = None, CPU_ONLY
        else:
            out[column] = int(rss * (1.0 if kind == "torch_allocated_bytes" else 1.1))
    return out


def _workload(
    name: str, rng: random.Random, speed: float, batch: int, seq: int, new_tokens: int
) -> dict[str, Any]:
    metric, n = TIMED[name]
    base = {"prefill": 0.002, "train": 0.01, "decode": 0.0015}[name] / speed
    seconds = [base * (1 + 0.1 * rng.random()) for _ in range(n)]
    tokens = batch * (new_tokens if name == "decode" else seq)
    per_token = [1 / s for s in seconds] if name == "decode" else [tokens / s for s in seconds]
    out = {
        **_stats(f"{name}.{metric}", seconds),
        **_stats(f"{name}.tokens_per_s", [p * batch for p in per_token]),
    }
    if name == "decode":
        out.update(_stats("decode.ttft_s", [s * 2 for s in seconds]))
        out["decode.use_cache"] = True
    return out


def make_record(
    *,
    model: str = "tiny-llama",
    dtype: str = "bfloat16",
    quant: str = "none",
    attn: str = "sdpa",
    grad_ckpt: bool = False,
    use_cache: str = "auto",
    batch: int = 2,
    seq: int = 64,
    new_tokens: int = 8,
    status: str = "ok",
    reason: str | None = None,
    device: str = "cpu",
    speed: float = 1.0,
    memory_mib: float = 400.0,
    workloads: Iterable[str] = ("prefill", "train", "decode"),
    **extra: Any,
) -> dict[str, Any]:
    """A record shaped like the runner's (see /tmp/lb-sample-run): knobs, status, metrics with spread."""
    knobs = {
        "model": model,
        "dtype": dtype,
        "quant": quant,
        "attn": attn,
        "grad_ckpt": grad_ckpt,
        "use_cache": use_cache,
        "batch": batch,
        "seq": seq,
        "new_tokens": new_tokens,
        "threads": 1,
    }
    cell_id = hashlib.sha1(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:16]
    label = f"{dtype}/{quant}/{attn}/{'ckpt' if grad_ckpt else 'no-ckpt'}/cache-{use_cache}"
    workloads = tuple(workloads)
    record: dict[str, Any] = {"cell_id": cell_id, "status": status, "reason": reason, "label": label, **knobs}
    record["workloads"] = ",".join(workloads)
    if status != "ok":
        return {**record, **extra}
    rng = random.Random(cell_id)
    record.update(
        {"device": device, "dtype_resolved": dtype, "load.model_s": 0.1 / speed, "load.tokenizer_s": 0.016}
    )
    record.update({"load.read_floor_s": 0.002, "mem.footprint_bytes": 1541440, "params": 385344})
    record.update(_memory("load", int(memory_mib * MiB), device))
    for offset, name in enumerate(workloads):
        record.update(_workload(name, rng, speed, batch, seq, new_tokens))
        record.update(_memory(name, int((memory_mib + 10 * offset) * MiB), device))
        record[f"energy.{name}.j_per_token"] = None
        record[f"energy.{name}.j_per_token.reason"] = "NVML is not available on this host"
    for name in ("prefill", "train"):
        record[f"{name}.mfu"], record[f"{name}.mfu.reason"] = (
            None,
            "no calibration probe ran (it needs a CUDA GPU)",
        )
    record["decode.mbu"], record["decode.mbu.reason"] = None, "no calibration probe ran (it needs a CUDA GPU)"
    return {**record, **extra}


def run_meta(name: str = "test") -> dict[str, Any]:
    environment = {
        "cpu_model": "Intel(R) Xeon(R) Processor",
        "cpu_cores_logical": 2,
        "cpu_flags": ["avx", "avx2"],
        "gpus_detail": [],
        "torch_version": "2.13.0+cpu",
        "transformers_version": "5.24.0",
        "python_version": "3.11.7",
        "hostname": "vm",
        "git_commit": "d9067d11d54d1cdf80aa25afa26d2e7ac5ae3e80",
    }
    return {
        "spec_hash": "0123456789abcdef",
        "spec": {"name": name},
        "plan": [],
        "environment": environment,
        "created_at": "2026-11-27T21:49:16+00:00",
    }


def make_run(directory: Path, records: Iterable[dict[str, Any]], name: str = "test") -> Path:
    """A run directory as the runner leaves it: run.json through RunStore, records as JSON lines."""
    store.RunStore.create(directory, run_meta(name))
    lines = [json.dumps({"schema_version": store.SCHEMA_VERSION, "env_index": 0, **r}) for r in records]
    (directory / "records.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return directory


def grid_records(model: str = "tiny-llama") -> list[dict[str, Any]]:
    """A small matrix: dtype × quant × attn, with speed and memory that differ per cell, plus failures."""
    speeds = {"float32": 1.0, "bfloat16": 0.8}
    mems = {"none": 400.0, "nf4": 300.0}
    records = [
        make_record(
            model=model,
            dtype=d,
            quant=q,
            attn=a,
            speed=speeds[d] * (1.2 if a == "sdpa" else 1.0),
            memory_mib=mems[q],
        )
        for d, q, a in itertools.product(("float32", "bfloat16"), ("none", "nf4"), ("eager", "sdpa"))
    ]
    records.append(
        make_record(
            model=model,
            attn="flash_attention_2",
            status="skipped",
            reason="rule host: flash_attention_2 needs a CUDA GPU of compute capability 8.0+; this host has none",
        )
    )
    records.append(
        make_record(
            model=model, quant="8bit", status="oom", reason="killed by the kernel OOM killer during train"
        )
    )
    records.append(
        make_record(model=model, quant="8bit", attn="eager", status="error", reason="ValueError: a | b `c`")
    )
    return records


@pytest.fixture
def grid_run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", grid_records())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadbench")
    report_command.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _cli(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return args.func(args)


# --- the frame ------------------------------------------------------------------------------------------


def test_frame_has_one_row_per_cell_and_the_documented_leading_columns(grid_run: Path) -> None:
    frame = report.to_frame(grid_run)
    assert len(frame) == 11
    leading = ["report_schema_version", *report.IDENTITY, *report.KNOBS]
    assert list(frame.columns[: len(leading)]) == leading
    assert set(frame["report_schema_version"]) == {report.REPORT_SCHEMA_VERSION}
    samples = frame.loc[frame["status"] == "ok", "prefill.latency_s.samples"].iloc[0]
    assert isinstance(samples, list) and len(samples) == 50


def test_quality_columns_appear_with_the_best_marked(tmp_path: Path) -> None:
    records = grid_records()[:3]
    for record, kl in zip(records, (0.0, 0.02, 0.5), strict=True):
        record["quality.kl"] = kl
    markdown = report.render(make_run(tmp_path / "q", records))["markdown"].read_text(encoding="utf-8")
    header, *rows = _md_table(markdown, "prefill")
    kl = header.index("quality.kl")
    assert [row[kl] for row in rows] == ["**0**", "0.02", "0.5"]


def _documented_patterns() -> list[re.Pattern[str]]:
    """Backticked names in the first column of docs/schema.md's tables, with <placeholders> as wildcards."""
    text = (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")
    names = re.findall(r"^\|\s*`([^`]+)`", text, flags=re.M)
    return [
        re.compile(re.sub(r"<[^>]+>", "[^ ]+", re.escape(n).replace(r"\<", "<").replace(r"\>", ">")) + "$")
        for n in names
    ]


def test_schema_doc_names_every_column(grid_run: Path) -> None:
    """docs/schema.md is the contract: every column of a real-shaped and the H100 frame is in it."""
    patterns = _documented_patterns()
    assert (
        f"report schema version {report.REPORT_SCHEMA_VERSION}"
        in (ROOT / "docs" / "schema.md").read_text().lower()
    )
    columns = set(report.to_frame(grid_run).columns) | set(report.to_frame(H100_RUN).columns)
    undocumented = sorted(c for c in columns if not any(p.match(c) for p in patterns))
    assert undocumented == []


def test_mixed_schema_versions_are_one_sentence_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = grid_records()
    run = make_run(tmp_path / "mixed", records[:2])
    with (run / "records.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({**records[2], "schema_version": 99}) + "\n")
    with pytest.raises(report.ReportError, match="mixes records of schema versions 1, 99"):
        report.to_frame(run)
    assert _cli("report", str(run)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("loadbench: ") and err.count("\n") == 0 and err.endswith(".")


def test_a_directory_that_is_not_a_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("report", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"loadbench: {tmp_path} is not a loadbench run directory (no run.json)."


# --- the files ------------------------------------------------------------------------------------------


def test_render_writes_four_files_into_the_run_by_default(grid_run: Path) -> None:
    paths = report.render(grid_run)
    assert {k: p.name for k, p in paths.items()} == report.OUTPUTS
    assert all(p.parent == grid_run and p.stat().st_size > 0 for p in paths.values())


def test_cli_writes_into_out_and_prints_the_paths(
    grid_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _cli("report", str(grid_run), "--out", str(out)) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(report.OUTPUTS.values())
    assert not (grid_run / "report.md").exists()


def test_parquet_keeps_samples_as_lists_and_csv_as_json(grid_run: Path, tmp_path: Path) -> None:
    paths = report.render(grid_run, tmp_path / "out")
    parquet = pd.read_parquet(paths["parquet"])
    csv = pd.read_csv(paths["csv"])
    frame = report.to_frame(grid_run)
    assert list(parquet.columns) == list(frame.columns) == list(csv.columns)
    ok = parquet["status"] == "ok"
    assert (
        list(parquet.loc[ok, "train.step_s.samples"].iloc[0]) == frame.loc[ok, "train.step_s.samples"].iloc[0]
    )
    assert (
        json.loads(csv.loc[ok, "train.step_s.samples"].iloc[0])
        == frame.loc[ok, "train.step_s.samples"].iloc[0]
    )


# --- markdown -------------------------------------------------------------------------------------------


def _md_table(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [
        [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows if not row.startswith("|--")
    ]


def test_markdown_has_a_table_per_workload_with_only_varying_knobs(grid_run: Path) -> None:
    markdown = report.render(grid_run)["markdown"].read_text(encoding="utf-8")
    for workload in report.WORKLOADS:
        header, *rows = _md_table(markdown, workload)
        assert header[:3] == ["dtype", "quant", "attn"]  # model, grad_ckpt, batch... do not vary
        assert "peak memory (RSS)" in header and "tok/s (p10–p90)" in header and header[-1] == "status"
        assert len(rows) == 8


def test_the_best_value_is_bold_only_when_its_interval_clears_the_others(grid_run: Path) -> None:
    frame = report.to_frame(grid_run)
    ok = frame[frame["status"] == "ok"].dropna(subset=["train.tokens_per_s"])
    fastest = ok.loc[ok["train.tokens_per_s"].idxmax()]
    others = ok.drop(index=fastest.name)
    tied = int((others["train.tokens_per_s.p90"] >= fastest["train.tokens_per_s.p10"]).sum())
    markdown = report.render(grid_run)["markdown"].read_text(encoding="utf-8")
    header, *rows = _md_table(markdown, "train")
    rate = header.index("tok/s (p10–p90)")
    bold = [row for row in rows if row[rate].startswith("**")]
    if tied:
        assert not bold and f"tok/s: the best median is tied with {tied} other cell(s)" in markdown
    else:
        assert len(bold) == 1 and bold[0][:3] == [fastest["dtype"], fastest["quant"], fastest["attn"]]
        assert bold[0][rate].startswith("**" + report.fmt_rate(fastest["train.tokens_per_s"]))
    memory = header.index("peak memory (RSS)")  # a single value per cell: the lowest is bold
    assert {row[1] for row in rows if row[memory].startswith("**")} == {"nf4"}


def test_separable_best_calls_overlapping_intervals_a_tie() -> None:
    from bench.analysis.report.tables import separable_best

    clear = separable_best([100.0, 80.0], [95.0, 70.0], [105.0, 90.0], "max")
    assert clear == ([True, False], 0)
    assert separable_best([100.0, 90.0, 50.0], [85.0, 70.0, 40.0], [110.0, 95.0, 60.0], "max") == (None, 1)
    assert separable_best([1.0, 1.2], [0.9, 1.25], [1.1, 1.3], "min") == ([True, False], 0)
    assert separable_best([1.0, 1.05], [0.9, 1.0], [1.1, 1.1], "min") == (None, 1)


def test_skipped_and_failed_cells_are_listed_with_their_reasons(grid_run: Path) -> None:
    markdown = report.render(grid_run)["markdown"].read_text(encoding="utf-8")
    skipped = _md_table(markdown, "skipped cells")
    reason = "rule host: flash_attention_2 needs a CUDA GPU of compute capability 8.0+; this host has none"
    assert skipped[1][-2:] == ["skipped", reason]
    failed = _md_table(markdown, "failed cells")
    assert [row[-2] for row in failed[1:]] == ["oom", "error"]
    assert failed[2][-1] == r"ValueError: a \| b \`c\`"


def test_a_missing_metric_is_a_dash_never_zero(tmp_path: Path) -> None:
    records = grid_records()[:2]
    del records[1]["load.model_s"]
    records[1]["mem.train.rss_bytes"] = None
    markdown = report.render(make_run(tmp_path / "run", records))["markdown"].read_text(encoding="utf-8")
    header, _, row = _md_table(markdown, "train")
    assert row[header.index("load")] == report.MISSING
    assert row[header.index("peak memory (RSS)")] == report.MISSING


def test_an_ok_cell_without_a_workload_is_named_with_its_reason(tmp_path: Path) -> None:
    records = grid_records()[:2]
    records[1] = make_record(attn="sdpa", workloads=("prefill", "decode"))
    records[1]["train.skipped_reason"] = "train needs peft for a quantized model"
    records[1]["workloads"] = "prefill,train,decode"
    markdown = report.render(make_run(tmp_path / "run", records))["markdown"].read_text(encoding="utf-8")
    assert "attn=sdpa: train not measured (train needs peft for a quantized model)." in markdown


# --- escaping and the HTML ------------------------------------------------------------------------------


@pytest.fixture
def hostile_run(tmp_path: Path) -> Path:
    records = grid_records(model=XSS)
    records.append(
        make_record(model="plain | `model`", dtype="float32", status="error", reason=f"boom {XSS} | x")
    )
    return make_run(tmp_path / "hostile", records, name=XSS)


def test_markdown_escapes_record_strings(hostile_run: Path) -> None:
    markdown = report.render(hostile_run)["markdown"].read_text(encoding="utf-8")
    assert "<script" not in markdown and "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    assert r"plain \| \`model\`" in markdown
    for line in markdown.splitlines():  # every table row keeps its column count
        if line.startswith("| model"):
            width = len(re.split(r"(?<!\\)\|", line))
        elif line.startswith("|"):
            assert len(re.split(r"(?<!\\)\|", line)) == width


def test_html_escapes_record_strings_and_runs_no_script(hostile_run: Path) -> None:
    page = report.render(hostile_run)["html"].read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "default-src 'none'" in page  # even an unescaped script could not run


def test_html_is_self_contained_with_an_inline_plot(grid_run: Path) -> None:
    page = report.render(grid_run)["html"].read_text(encoding="utf-8")
    assert "<svg" in page or "data:image/png" in page
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(link|script|iframe)\b", page, flags=re.I)
    assert not re.search(r"\b(src|href)=\"(?!#|data:)", page)
    assert page.count("<table") == 5  # prefill, train, decode, skipped, failed
    assert "<strong>" in page


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(1.0, 10.0), (2.0, 30.0), (2.0, 20.0), (3.0, 25.0), (4.0, 40.0), (0.5, 5.0)]
    assert report.pareto_front(points) == [5, 0, 1, 4]


def _count_color(image: Any, rgb: tuple[int, int, int], tolerance: float = 0.06) -> int:
    """Pixels within `tolerance` of a colour (image: floats in 0..1, as imread gives a PNG)."""
    import numpy as np

    target = np.array(rgb) / 255
    return int(np.all(np.abs(image - target) < tolerance, axis=2).sum())


def test_chromium_shows_the_plots(grid_run: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from matplotlib.image import imread

    page = report.render(grid_run)["html"]
    shot = tmp_path / "shot.png"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    image = imread(shot)[..., :3]
    non_white = int((image.min(axis=2) < 0.95).sum())
    assert non_white > 50_000, "the screenshot is (nearly) blank"
    assert _count_color(image, (0x4B, 0x7B, 0xB5)) > 2_000, "no bar of the per-knob plot is visible"
    assert _count_color(image, (0xD0, 0x59, 0x1C)) > 50, "the Pareto front is not visible"


# --- real runs ------------------------------------------------------------------------------------------


def test_the_committed_h100_run_reports_allocator_peaks_and_skip_reasons(tmp_path: Path) -> None:
    markdown = report.render(H100_RUN, tmp_path)["markdown"].read_text(encoding="utf-8")
    header, *rows = _md_table(markdown, "train")
    assert header[:3] == ["quant", "attn", "grad_ckpt"]
    assert "peak memory (torch allocated)" in header and len(rows) == 6
    assert "flash-attn package, which is not installed" in markdown
    assert "NVIDIA H100 80GB HBM3" in markdown


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    from bench.plan.matrix import MatrixSpec, Shape
    from bench.run.session import RunRequest, run_matrix

    out = tmp_path_factory.mktemp("real") / "run"
    spec = MatrixSpec(
        model=str(tiny_llama),
        dtype=("float32", "bfloat16"),
        attn=("eager", "sdpa", "flash_attention_2"),
        workloads=("prefill", "decode"),
        shape=Shape(1, 16, 2),
    )
    assert run_matrix(RunRequest(spec=spec, out=out, budget_s=0.1, live=False)) == 0
    return out


def test_a_real_cpu_run_renders(real_run: Path, tmp_path: Path) -> None:
    paths = report.render(real_run, tmp_path)
    markdown = paths["markdown"].read_text(encoding="utf-8")
    header, *rows = _md_table(markdown, "prefill")
    assert header[:2] == ["dtype", "attn"] and len(rows) == 4
    assert "## train" not in markdown  # not asked for, so no table and no excuses
    assert len(_md_table(markdown, "skipped cells")) == 3
    assert "<svg" in paths["html"].read_text(encoding="utf-8")


# --- the 10k budget -------------------------------------------------------------------------------------


def ten_thousand_records() -> list[dict[str, Any]]:
    """10,368 cells of a wide matrix: 4 models × 3 dtypes × 4 quants × 3 attns × 2 ckpt × 3 caches × 3 batches
    × 2 sequence lengths; a fifth of the flash_attention_2 cells skipped."""
    axes = itertools.product(
        ("tiny-llama", "qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-1b"),
        ("float32", "bfloat16", "float16"),
        ("none", "nf4", "fp4", "8bit"),
        ("eager", "sdpa", "flash_attention_2"),
        (False, True),
        ("auto", "on", "off"),
        (1, 2, 4),
        (64, 128, 256, 512),
    )
    records = []
    for index, (model, dtype, quant, attn, ckpt, cache, batch, seq) in enumerate(axes):
        knobs = {"model": model, "dtype": dtype, "quant": quant, "attn": attn, "grad_ckpt": ckpt}
        knobs |= {"use_cache": cache, "batch": batch, "seq": seq}
        if attn == "flash_attention_2" and index % 5 == 0:
            records.append(
                make_record(**knobs, status="skipped", reason="flash_attention_2 needs a CUDA GPU")
            )
        else:
            records.append(make_record(**knobs, speed=1 + (index % 17) / 10, memory_mib=300 + index % 97))
    return records


@pytest.mark.perf
def test_rendering_10k_records_takes_at_most_5_s(benchmark: Any, tmp_path: Path) -> None:
    records = ten_thousand_records()
    assert len(records) >= 10_000
    run = make_run(tmp_path / "big", records)
    out = tmp_path / "out"
    benchmark.pedantic(report.render, args=(run, out), rounds=3, iterations=1)
    assert (out / "report.html").stat().st_size > 0
    median = benchmark.stats.stats.median
    assert median <= 5.0, (
        f"rendering {len(records)} records took {median:.2f} s (median), over the 5 s budget"
    )
