"""The attention values beyond transformers' own (sdpa backend pins, kernels-hub flash) and the decode axis:
validation, skip rules, cell ids, the estimate, and measured records on the tiny model (CPU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bench.measure.attention import decode_kernel_columns, sdpa_calls
from bench.measure.cell import run_cell
from bench.measure.decoding import compile_warmup, generate_kwargs
from bench.measure.probes import Budget
from bench.measure.workloads import InvalidMeasurement, Workload, generate_once, make_inputs
from bench.plan.cells import Cell
from bench.plan.estimate.phases import breakdown
from bench.plan.estimate.table import config_for
from bench.plan.matrix import MatrixSpec, Shape, SpecError, expand
from loader import GpuInfo, HostCapabilities, LoadConfig, LoadConfigError, get_model
from loader.attention import KERNELS_FLASH, KERNELS_FLASH_VERSION, kernels_fetch_command, sdpa_pin
from loader.host import hub_kernel_cached

ROOT = Path(__file__).resolve().parents[1]
CPU = HostCapabilities(bitsandbytes_version="0.50", bitsandbytes_devices=("cpu",), kernels_version="0.19")
H100 = HostCapabilities(
    (GpuInfo("NVIDIA H100", 80 << 30, (9, 0), True),), None, False, "0.50", None, ("cuda", "cpu"), "0.19"
)
FIXED = Budget(min_n=5, max_n=5, seconds=0.0, warmup=1)


def _cell(cells: list[Cell], **knobs: object) -> Cell:
    return next(c for c in cells if all(getattr(c, k) == v for k, v in knobs.items()))


# -- validation: one sentence naming the field and the allowed values ------------------------------------


def test_bad_decode_mode_names_the_field_and_the_modes() -> None:
    with pytest.raises(SpecError) as err:
        MatrixSpec(decode=("fast",))
    assert (
        str(err.value) == "decode='fast' is not allowed; use one or more of: 'dynamic', 'static', 'compiled'."
    )


def test_bad_attention_value_lists_the_pins_and_kernels_flash() -> None:
    with pytest.raises(SpecError) as err:
        MatrixSpec(attn=("sdpa:fast",))
    text = str(err.value)
    assert text.startswith("attn='sdpa:fast' is not allowed; use one or more of: 'eager', 'sdpa'")
    for value in ("'sdpa:math'", "'sdpa:flash'", "'sdpa:efficient'", "'sdpa:cudnn'", "'kernels-flash'"):
        assert value in text


def test_loader_sdpa_backend_is_checked(tiny_llama) -> None:
    with pytest.raises(LoadConfigError) as err:
        LoadConfig(str(tiny_llama), attn_implementation="sdpa", sdpa_backend="fast")
    assert str(err.value) == (
        "sdpa_backend='fast' is not allowed; use one of: None, 'math', 'flash', 'efficient', 'cudnn'."
    )
    with pytest.raises(LoadConfigError, match=r"sdpa_backend='math' pins a kernel of torch's sdpa, but "):
        LoadConfig(str(tiny_llama), attn_implementation="eager", sdpa_backend="math")


def test_cli_refuses_a_bad_decode_mode(capsys) -> None:
    from bench.cli import main

    assert main(["plan", "--decode", "dynamic,fast"]) == 2
    assert "decode='fast' is not allowed; use one or more of: 'dynamic', 'static', 'compiled'." in (
        capsys.readouterr().err
    )


# -- cell ids: stored baselines still match; only the new values get new ids --------------------------------


def test_stored_baseline_cell_ids_are_unchanged() -> None:
    """Every record of the committed H100 baseline gets its stored cell_id back (dynamic decode, plain attn)."""
    run = ROOT / "results" / "h100-2026-11-27"
    load = tuple(sorted(json.loads((run / "run.json").read_text())["spec"]["load"].items()))
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    for r in records:
        cell = Cell(
            r["model"],
            r["checkpoint"],
            r["dtype"],
            r["quant"],
            r["attn"],
            r["grad_ckpt"],
            r["use_cache"],
            tuple(r["workloads"].split(",")),
            Shape(r["batch"], r["seq"], r["new_tokens"]),
            r["threads"],
            load,
        )
        assert cell.decode == "dynamic" and cell.cell_id == r["cell_id"], r["label"]


def test_new_values_get_new_ids_and_labels(tiny_llama) -> None:
    spec = MatrixSpec(attn=("sdpa", "sdpa:math"), decode=("dynamic", "static", "compiled"))
    cells = expand(spec, tiny_llama, "fp", CPU)
    assert len({c.cell_id for c in cells}) == 6
    plain = expand(MatrixSpec(), tiny_llama, "fp", CPU)[0]
    assert _cell(cells, attn="sdpa", decode="dynamic").cell_id == plain.cell_id
    compiled = _cell(cells, attn="sdpa:math", decode="compiled")
    assert compiled.label == "bfloat16/none/sdpa:math/no-ckpt/cache-auto/decode-compiled"
    assert compiled.knobs()["decode"] == "compiled"
    assert Cell.from_dict(compiled.to_dict()) == compiled
    assert MatrixSpec(decode=("dynamic",)).spec_hash() == MatrixSpec().spec_hash()


# -- skip rules ------------------------------------------------------------------------------------------


def test_plan_on_this_cpu_runs_the_cpu_values_and_explains_the_rest(tiny_llama) -> None:
    spec = MatrixSpec(
        quant=("none", "nf4"),
        attn=("sdpa", "sdpa:math", "sdpa:flash", "sdpa:efficient", "sdpa:cudnn", "kernels-flash"),
        grad_ckpt=(False, True),
        decode=("dynamic", "static", "compiled"),
    )
    cells = expand(spec, tiny_llama, "fp", CPU)
    assert all(c.skip_reason is None or c.skip_reason.startswith("rule ") for c in cells)
    for attn in ("sdpa:math", "sdpa:flash"):
        for decode in ("dynamic", "static", "compiled"):
            assert _cell(cells, quant="none", attn=attn, grad_ckpt=False, decode=decode).skip_reason is None
    for backend in ("efficient", "cudnn"):
        assert _cell(cells, attn=f"sdpa:{backend}").skip_reason == (
            f"rule host: the sdpa {backend} kernel exists only on CUDA GPUs; this host has none "
            "(use sdpa:math or sdpa:flash)."
        )
    assert _cell(cells, attn="kernels-flash").skip_reason == (
        f"rule host: {KERNELS_FLASH} needs a CUDA GPU of compute capability 8.0+; this host has none."
    )
    nf4 = _cell(cells, quant="nf4", attn="sdpa", grad_ckpt=False, decode="compiled")
    assert nf4.skip_reason.startswith(
        "rule compile-quantized: transformers does not compile a bnb-4bit model"
    )
    assert _cell(cells, quant="nf4", attn="sdpa", grad_ckpt=False, decode="static").skip_reason is None
    ckpt = _cell(cells, quant="none", attn="sdpa", grad_ckpt=True, decode="static")
    assert ckpt.skip_reason.startswith("rule static-cache-needs-cache:")


def test_a_decode_mode_without_a_decode_workload_is_skipped(tiny_llama) -> None:
    spec = MatrixSpec(decode=("dynamic", "static"), workloads=("prefill",))
    dynamic, static = expand(spec, tiny_llama, "fp", CPU)
    assert dynamic.skip_reason is None
    assert static.skip_reason == (
        "rule decode-mode-needs-decode: decode=static only changes generation, and this cell has no decode "
        "workload."
    )


def test_compiled_decode_needs_a_cpp_compiler_on_the_cpu(tiny_llama, monkeypatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    (cell,) = expand(MatrixSpec(decode=("compiled",)), tiny_llama, "fp", CPU)
    assert cell.skip_reason.startswith(
        "rule compile-needs-compiler: torch.compile on the CPU builds C++ kernels"
    )
    (gpu_cell,) = expand(MatrixSpec(decode=("compiled",)), tiny_llama, "fp", H100)
    assert gpu_cell.skip_reason is None  # on CUDA inductor generates Triton, not C++


def test_sdpa_pins_on_a_gpu_host(tiny_llama) -> None:
    spec = MatrixSpec(dtype=("float32", "bfloat16"), attn=("sdpa:flash", "sdpa:efficient", "sdpa:cudnn"))
    cells = expand(spec, tiny_llama, "fp", H100)
    assert (
        "takes only float16 or bfloat16 on CUDA"
        in _cell(cells, dtype="float32", attn="sdpa:flash").skip_reason
    )
    assert (
        "takes only float16 or bfloat16 on CUDA"
        in _cell(cells, dtype="float32", attn="sdpa:cudnn").skip_reason
    )
    assert _cell(cells, dtype="float32", attn="sdpa:efficient").skip_reason is None
    assert all(c.skip_reason is None for c in cells if c.dtype == "bfloat16")


def test_kernels_flash_offline_without_the_kernel_names_the_fetch_command(tiny_llama) -> None:
    (cell,) = expand(MatrixSpec(attn=("kernels-flash",)), tiny_llama, "fp", H100)
    assert cell.skip_reason == (
        f"rule host: {KERNELS_FLASH} (version {KERNELS_FLASH_VERSION}) is not in the local Hugging Face cache "
        f"and loadbench runs offline; fetch it once, online, with: {kernels_fetch_command()}"
    )
    assert kernels_fetch_command() == (
        "python -c \"from kernels import get_kernel; get_kernel('kernels-community/flash-attn2', version=4)\""
    )
    no_package = HostCapabilities(H100.gpus, bitsandbytes_version="0.50")
    (cell,) = expand(MatrixSpec(attn=("kernels-flash",)), tiny_llama, "fp", no_package)
    assert "needs the kernels package, which is not installed (pip install kernels)" in cell.skip_reason
    cached = HostCapabilities(H100.gpus, kernels_version="0.19", hub_kernels=(KERNELS_FLASH,))
    cells = expand(
        MatrixSpec(dtype=("bfloat16", "float32"), attn=("kernels-flash",)), tiny_llama, "fp", cached
    )
    assert cells[0].skip_reason is None and "runs only in float16 or bfloat16" in cells[1].skip_reason
    assert cells[0].load_config(tiny_llama).attn_implementation == KERNELS_FLASH


def test_kernel_cache_check_reads_the_layout_kernels_reads_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KERNELS_CACHE", str(tmp_path))
    repo = tmp_path / "kernels--kernels-community--flash-attn2"
    assert not hub_kernel_cached(KERNELS_FLASH, KERNELS_FLASH_VERSION)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "v4").write_text("abc123")
    assert not hub_kernel_cached(KERNELS_FLASH, KERNELS_FLASH_VERSION)  # a ref without its snapshot
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    assert hub_kernel_cached(KERNELS_FLASH, KERNELS_FLASH_VERSION)
    assert not hub_kernel_cached(KERNELS_FLASH, 3)


def test_kernels_flash_version_is_the_one_transformers_loads() -> None:
    from transformers.modeling_flash_attention_utils import FLASH_ATTN_KERNEL_VERSIONS

    assert FLASH_ATTN_KERNEL_VERSIONS[KERNELS_FLASH] == KERNELS_FLASH_VERSION


# -- the estimate ---------------------------------------------------------------------------------------------


def test_static_cache_is_preallocated_in_the_decode_estimate() -> None:
    config = config_for("qwen2.5-0.5b")
    knobs = dict(
        dtype="bfloat16", quant="none", attn="sdpa", grad_ckpt=False, batch=4, seq=512, new_tokens=64
    )
    dynamic = breakdown(config, **knobs)["decode"]
    static = breakdown(config, **knobs, decode="static")["decode"]
    compiled = breakdown(config, **knobs, decode="compiled")["decode"]
    # the prompt's forward already holds the whole preallocated cache: its new tokens' share comes on top
    assert static.peak_at == dynamic.peak_at == "prompt forward"
    new_tokens_kv = 2 * 128 * 2 * 24 * 4 * 64  # k+v x kv_dim x bf16 bytes x layers x batch x new tokens
    assert static.total_bytes - dynamic.total_bytes == new_tokens_kv
    assert compiled.total_bytes == static.total_bytes
    # a math pin keeps the probability matrix for backward, which the flash kernel unpinned sdpa runs does not
    math = breakdown(config, **{**knobs, "attn": "sdpa:math"}, device="cuda")["train"]
    assert math.total_bytes > breakdown(config, **knobs, device="cuda")["train"].total_bytes
    flash = breakdown(config, **{**knobs, "attn": "sdpa:flash"}, device="cuda")["train"]
    assert flash.total_bytes == breakdown(config, **knobs, device="cuda")["train"].total_bytes


# -- measured on the tiny model ------------------------------------------------------------------------------


def test_a_pin_runs_the_pinned_kernel_and_torch_refuses_the_cuda_only_ones_here(tiny_llama) -> None:
    model = get_model(LoadConfig(str(tiny_llama), dtype="float32", attn_implementation="sdpa")).eval()
    ids = make_inputs(1000, 1, 16, "cpu")
    for backend in ("math", "flash"):
        with sdpa_pin(backend):
            assert set(sdpa_calls(lambda: model(ids, use_cache=False))) == {backend}
    for backend in ("efficient", "cudnn"):  # what the CPU skip rule says, torch itself says too
        with sdpa_pin(backend), torch.no_grad(), pytest.raises(RuntimeError, match="No viable backend"):
            model(ids, use_cache=False)


def test_a_pinned_kernel_torch_refuses_ends_the_cell_unsupported() -> None:
    from bench.measure.cell import classify

    q = torch.randn(1, 2, 8, 16)
    with sdpa_pin("efficient"), pytest.raises(RuntimeError) as err:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    outcome = classify(err.value)
    assert outcome.status == "unsupported" and "No viable backend" in outcome.reason


def test_recipes_name_the_new_attention_values(tiny_llama) -> None:
    from bench.plan.spec import attn_value

    assert attn_value(LoadConfig(str(tiny_llama), attn_implementation=KERNELS_FLASH)) == "kernels-flash"
    pinned = LoadConfig(str(tiny_llama), attn_implementation="sdpa", sdpa_backend="cudnn")
    assert attn_value(pinned) == "sdpa:cudnn"
    assert attn_value(LoadConfig(str(tiny_llama))) == "sdpa"


def _decode_cell(tiny_llama: Path, attn: str, decode: str) -> dict:
    cell = Cell(
        "tiny-llama", "fp", "float32", "none", attn, False, "auto", ("prefill", "decode"), Shape(1, 16, 4), 1
    )
    return run_cell(dataclasses.replace(cell, decode=decode), tiny_llama, FIXED, lambda event: None)


def test_sdpa_math_with_a_static_cache_runs_and_says_so(tiny_llama) -> None:
    out = _decode_cell(tiny_llama, "sdpa:math", "static")
    assert out["attn.sdpa_kernel"] == "math" and out["decode.sdpa_kernel"] == "math"
    assert out["decode.tokens_per_s"] > 0 and out["decode.ttft_s.n"] == 5 and out["prefill.tokens_per_s"] > 0
    assert (
        out["decode.compile_s"] is None and out["decode.compile_s.reason"] == "decode=static does not compile"
    )
    eager = _decode_cell(tiny_llama, "eager", "dynamic")
    assert (
        eager["attn.sdpa_kernel"] is None
        and eager["attn.sdpa_kernel.reason"] == "attention eager is not sdpa"
    )


def test_the_decode_probe_notes_sdpa_calls_that_ran_another_kernel_than_the_pin(tiny_llama) -> None:
    model = get_model(LoadConfig(str(tiny_llama), dtype="float32", attn_implementation="sdpa")).eval()
    w = Workload(model, make_inputs(1000, 1, 8, "cpu"), 3, FIXED, lambda: None, pad_token_id=0)
    layers = model.config.num_hidden_layers
    # an unpinned generation on the CPU runs the flash kernel in every forward: nothing to note without a pin
    assert decode_kernel_columns(lambda: generate_once(w, True, {}), "sdpa", layers, 3) == {
        "decode.sdpa_kernel": "flash"
    }
    # read as if the pin had asked for math (what a compiled graph does to a pin), the calls are counted
    cols = decode_kernel_columns(lambda: generate_once(w, True, {}), "sdpa", layers, 3, pin="math")
    assert cols["decode.sdpa_kernel"] == "flash"
    assert cols["decode.sdpa_kernel.note"] == (
        f"{3 * layers} sdpa call(s) per generation ran flash although the pin asked for math "
        "(a pin does not reach inside a compiled graph)"
    )


def test_a_forward_that_did_not_compile_is_refused(tiny_llama) -> None:
    model = get_model(LoadConfig(str(tiny_llama), dtype="float32", attn_implementation="sdpa")).eval()
    w = Workload(model, make_inputs(1000, 1, 8, "cpu"), 2, FIXED, lambda: None, pad_token_id=0)
    with pytest.raises(NotImplementedError, match="transformers did not compile the forward"):
        compile_warmup(lambda: generate_once(w, True, generate_kwargs("static")), w.sync)


@pytest.mark.slow
def test_compiled_decode_times_its_compile_apart_from_ttft(tiny_llama) -> None:
    out = _decode_cell(tiny_llama, "sdpa:math", "compiled")
    assert out["decode.compiled_graphs"] >= 1 and out["decode.graph_breaks"] == 0
    assert out["decode.compile_cache"] in ("cold", "cached", "partly cached")
    # compiling took seconds; no timed first token or generation holds any of it
    assert out["decode.compile_s"] > 0.3
    assert max(out["decode.ttft_s.samples"]) < out["decode.compile_s"] / 10
    assert 1 / min(out["decode.tokens_per_s.samples"]) * 4 < out["decode.compile_s"] / 10
    # the prompt's forward ran eagerly under the pin; the compiled token steps ran what inductor chose when
    # it compiled, which the record reads back and notes when it is not the pinned kernel
    assert out["attn.sdpa_kernel"] == "math"
    kernels = out["decode.sdpa_kernel"].split("+")
    assert "math" in kernels
    if kernels != ["math"]:
        assert "pin" in out["decode.sdpa_kernel.note"] or "inductor" in out["decode.sdpa_kernel.note"]


@pytest.mark.slow
def test_a_recompile_during_the_timed_samples_makes_the_cell_invalid(tiny_llama) -> None:
    model = get_model(LoadConfig(str(tiny_llama), dtype="float32", attn_implementation="sdpa")).eval()
    w = Workload(model, make_inputs(1000, 1, 8, "cpu"), 2, FIXED, lambda: None, pad_token_id=0)
    extra = generate_kwargs("compiled")
    warm = compile_warmup(lambda: generate_once(w, True, extra), w.sync)
    warm.check_no_recompiles()  # nothing compiled since the warm-up
    w.input_ids = make_inputs(1000, 2, 8, "cpu")  # a new batch size: dynamo builds another graph
    generate_once(w, True, extra)
    with pytest.raises(InvalidMeasurement, match="new graph"):
        warm.check_no_recompiles()


@pytest.mark.slow
def test_run_gives_ok_records_for_the_cpu_values(tmp_path, ckpt_cache, monkeypatch) -> None:
    """The issue's definition of done, on this CPU: the plan's CPU-capable cells end `ok`."""
    from bench.cli import main
    from bench.run.store import RunStore

    monkeypatch.setenv("LOADBENCH_CACHE", str(ckpt_cache))
    out = tmp_path / "run"
    args = ["--quant", "none,nf4", "--attn", "sdpa,sdpa:math", "--decode", "dynamic,compiled"]
    args += ["--dtype", "float32", "--grad-ckpt", "off", "--workloads", "prefill,decode"]
    args += ["--seq", "16", "--new-tokens", "4"]
    assert main(["run", *args, "--out", str(out), "--no-live", "--budget", "0.1"]) == 0
    stored = RunStore.open(out).records()
    records = {(r["quant"], r["attn"], r["decode"]): r for r in stored}
    assert len(records) == len(stored) == 8
    for key, r in records.items():
        if key[0] == "nf4" and key[2] == "compiled":
            assert r["status"] == "skipped" and r["reason"].startswith("rule compile-quantized:")
            continue
        assert r["status"] == "ok", (key, r.get("reason"))
        assert r["decode"] == key[2] and (r["decode.compile_s"] is not None) == (key[2] == "compiled")
    assert records[("none", "sdpa:math", "compiled")]["attn.sdpa_kernel"] == "math"
    # the new axis flows into the report and recommend: a decode column, the compile apart from tok/s
    from bench.analysis.frame import to_frame
    from bench.analysis.recommend import candidates

    report = (out / "report.md").read_text()
    assert "| decode | load |" in report and "compile (once)" in report
    choices = candidates(to_frame(out), "infer")
    assert len(choices) == 6
    for choice in choices:
        assert (choice.compile_s is not None) == (
            choice.knobs["decode"] == "compiled"
        ) and choice.compile_s != 0


# -- readers: records from before the decode axis read as dynamic ----------------------------------------------


def test_records_from_before_the_axis_read_as_dynamic_decode() -> None:
    from bench.analysis.compare.matching import _knob_key
    from bench.analysis.frame import to_frame

    run = ROOT / "results" / "h100-2026-11-27"
    frame = to_frame(run)
    assert set(frame["decode"]) == {"dynamic"}
    old = json.loads((run / "records.jsonl").read_text().splitlines()[0])
    assert "decode" not in old
    assert _knob_key(old) == _knob_key({**old, "decode": "dynamic"}) != _knob_key({**old, "decode": "static"})


def test_find_max_probes_decode_in_the_cells_mode_under_its_pin(tiny_llama) -> None:
    """--find-max's probe loads and generates as the cell does (its decode mode, its pin), and a value the
    host cannot run ends the search with the loader's sentence instead of a shape measured another way."""
    from bench.measure.findmax import probe

    cell = Cell(
        "tiny-llama", "fp", "float32", "none", "sdpa:math", False, "auto", ("decode",), Shape(2, 16, 4), 1
    )
    status, peak, _ = probe(dataclasses.replace(cell, decode="static"), tiny_llama)
    assert status == "fits" and peak
    status, _, why = probe(dataclasses.replace(cell, attn="sdpa:efficient", decode="static"), tiny_llama)
    assert status == "error" and "the sdpa efficient kernel exists only on CUDA GPUs" in why
