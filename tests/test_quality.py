"""bench.measure.quality: evaluation text, chunked log-probs, the safetensors reference and the quality columns,
on the real tiny checkpoint (CPU). Measured KL / agreement numbers are printed (run with -s)."""

from __future__ import annotations

import json
import math
import struct
import warnings
from pathlib import Path
from typing import Any

import pytest

from bench.measure.quality import (
    EVAL_TEXT,
    NOTE_REAL,
    NOTE_SYNTHETIC,
    cell_quality,
    compute_reference,
    eval_ids,
    eval_text,
    is_synthetic,
    load_reference,
    logprobs,
    quality_columns,
    quality_note,
    quality_or_reason,
    reference_config,
    reference_task,
    save_reference,
)
from bench.plan.matrix import Cell, Shape

torch = pytest.importorskip("torch")


def _bnb_cpu() -> bool:
    from loader import current_host
    from loader.quantization import quantization_unsupported_reason

    return quantization_unsupported_reason("bnb-4bit", current_host()) is None


def _load(ckpt: Path, dtype: str, quant: str = "none", attn: str = "sdpa") -> tuple[Any, Any]:
    from loader import current_host, get_model, get_tokenizer

    cell = Cell("tiny-llama", "x", dtype, quant, attn, False, "auto", ("prefill",), Shape(), 1)
    config = cell.load_config(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_model(config, current_host()), get_tokenizer(config)


@pytest.fixture(scope="module")
def reference(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quality") / "reference.safetensors"
    return compute_reference(tiny_llama, "cpu", path)


# ------------------------------------------------------------------------------------------ text


def test_eval_text_is_shipped_plain_prose() -> None:
    text = eval_text()
    size = len(text.encode("utf-8"))
    assert 20_000 <= size <= 40_000
    assert EVAL_TEXT.parent.name == "data" and text.isascii()
    assert text.count(".") > 200  # sentences, not a word list


def test_eval_text_tokenizes_to_2k_tokens(tiny_llama: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    config = AutoConfig.from_pretrained(tiny_llama)
    full = eval_ids(tok, max_tokens=10**6, max_positions=10**6)
    assert full.numel() >= 2048
    assert int(full.max()) < min(len(tok), config.vocab_size) and int(full.min()) >= 0
    ids = eval_ids(tok, model_config=config)  # max_tokens 2048, capped at the model's 1024 positions
    assert ids.dtype == torch.long and ids.shape == (min(2048, config.max_position_embeddings),)
    assert torch.equal(ids, full[: ids.numel()])
    assert eval_ids(tok, max_tokens=300).shape == (300,)


# ------------------------------------------------------------------------------------- log-probs


def test_chunked_logprobs_match_one_forward(tiny_llama: Path) -> None:
    model, tok = _load(tiny_llama, "float32", attn="eager")
    ids = eval_ids(tok, max_tokens=700)
    chunked = logprobs(model, ids, "cpu", chunk=128)
    with torch.no_grad():
        whole = torch.log_softmax(model(ids[None], use_cache=False).logits[0].float(), -1)
    assert chunked.shape == (700, model.config.vocab_size) and chunked.dtype == torch.float32
    assert torch.allclose(chunked, whole, atol=1e-4)
    assert torch.allclose(chunked.exp().sum(-1), torch.ones(700), atol=1e-4)


def test_reference_round_trips_through_safetensors(tmp_path: Path) -> None:
    lp = torch.log_softmax(torch.randn(17, 33), -1)
    ids = torch.randint(0, 33, (17,))
    path = save_reference(tmp_path / "ref.safetensors", lp, {"knobs": {"dtype": "float32"}, "note": "x"}, ids)
    ref = load_reference(path)
    assert torch.equal(ref.logprobs, lp) and torch.equal(ref.ids, ids)
    assert ref.meta["knobs"] == {"dtype": "float32"} and ref.meta["note"] == "x" and ref.meta["format"] == 1
    # a safetensors file: an 8-byte header length, then JSON; nothing a loader would execute
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert set(header) == {"__metadata__", "logprobs", "ids"}
    assert header["logprobs"]["dtype"] == "F32" and header["logprobs"]["shape"] == [17, 33]
    assert not list(tmp_path.glob(".ref.safetensors.*"))  # the temporary file was renamed into place
    with pytest.raises(ValueError):
        save_reference(tmp_path / "bad.safetensors", lp[0], {})


def test_compute_reference_once_and_cached(reference: Path, tiny_llama: Path) -> None:
    ref = load_reference(reference)
    assert (
        ref.meta["knobs"] == reference_config("cpu") == {"dtype": "float32", "quant": "none", "attn": "eager"}
    )
    assert ref.meta["synthetic"] is True and ref.meta["tokens"] == ref.ids.numel() == 1024
    assert ref.logprobs.shape == (1024, 2048)
    mtime = reference.stat().st_mtime_ns
    assert compute_reference(tiny_llama, "cpu", reference) == reference
    assert reference.stat().st_mtime_ns == mtime  # same checkpoint and knobs: kept, not recomputed


# ---------------------------------------------------------------------------------------- metrics


def test_reference_against_itself(reference: Path, tiny_llama: Path) -> None:
    model, tok = _load(tiny_llama, "float32", attn="eager")
    q = cell_quality(model, tok, "cpu", reference, synthetic=is_synthetic(tiny_llama))
    assert q["quality.kl"] == pytest.approx(0.0, abs=1e-9)
    assert q["quality.top1_agree"] == 1.0
    assert q["quality.ppl"] == pytest.approx(q["quality.ref_ppl"]) and q[
        "quality.ppl_delta"
    ] == pytest.approx(0.0)
    assert q["quality.note"] == NOTE_SYNTHETIC
    assert 1000 < q["quality.ref_ppl"] < 5000  # random weights: about uniform over 2048 tokens


def test_bf16_against_fp32_reference(reference: Path, tiny_llama: Path) -> None:
    model, tok = _load(tiny_llama, "bfloat16")
    q = cell_quality(model, tok, "cpu", reference, synthetic=True)
    print(f"\nbf16/sdpa vs fp32/eager: {q}")
    assert 0.0 < q["quality.kl"] < 0.1
    assert 0.0 < q["quality.top1_agree"] <= 1.0
    assert math.isfinite(q["quality.ppl_delta"])


@pytest.mark.slow
@pytest.mark.skipif(not _bnb_cpu(), reason="bitsandbytes has no backend on this host")
def test_nf4_and_8bit_against_reference(reference: Path, tiny_llama: Path) -> None:
    """Reported, not ordered: what nf4 and 8-bit measure against the float32 reference here."""
    results = {}
    for dtype in ("float32", "bfloat16"):
        for quant in ("nf4", "8bit"):
            model, tok = _load(tiny_llama, dtype, quant)
            results[f"{dtype}/{quant}"] = q = cell_quality(model, tok, "cpu", reference, synthetic=True)
            assert q["quality.kl"] > 0 and math.isfinite(q["quality.kl"])
            assert 0 < q["quality.top1_agree"] <= 1
    print("\nquality vs float32/eager reference (tiny-llama, random weights):")
    for name, q in results.items():
        print(
            f"  {name:16s} kl {q['quality.kl']:.3e} nats  top1 {q['quality.top1_agree']:.4f}  "
            f"ppl {q['quality.ppl']:.2f} (ref {q['quality.ref_ppl']:.2f}, delta {q['quality.ppl_delta']:+.3f})"
        )


def test_quality_columns_by_hand() -> None:
    v = 8
    uniform = torch.full((5, v), -math.log(v))
    ids = torch.tensor([0, 1, 2, 3, 4])
    q = quality_columns(uniform, uniform, ids, synthetic=False)
    assert q["quality.kl"] == pytest.approx(0.0) and q["quality.ppl"] == pytest.approx(v)
    assert q["quality.note"] == NOTE_REAL and q["quality.positions"] == 4
    # a cell sure of token 0 everywhere: KL(uniform ‖ cell) large; agreement only where the
    # reference's argmax (first index on ties) is 0 too
    sharp = torch.log_softmax(torch.tensor([[10.0] + [0.0] * (v - 1)] * 5), -1)
    q = quality_columns(sharp, uniform, ids, synthetic=True)
    expected_kl = float((uniform.exp() * (uniform - sharp)).sum(-1).mean())
    assert q["quality.kl"] == pytest.approx(expected_kl)
    assert q["quality.top1_agree"] == 1.0  # argmax ties resolve to index 0 in both
    nll = -float(sharp[torch.arange(4), ids[1:]].mean())
    assert q["quality.ppl"] == pytest.approx(math.exp(nll)) and q["quality.ppl_delta"] == pytest.approx(
        math.exp(nll) - v
    )
    assert q["quality.note"] == NOTE_SYNTHETIC


def test_reference_config_knobs() -> None:
    assert reference_config("cuda:0") == {"dtype": "bfloat16", "quant": "none", "attn": "sdpa"}
    assert reference_config("cpu", {"attn": "sdpa"})["attn"] == "sdpa"
    cell = Cell("tiny-llama", "x", "bfloat16", "nf4", "sdpa", False, "auto", ("prefill",), Shape(), 1)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert reference_config(cell) == reference_config(expected)
    with pytest.raises(ValueError):
        reference_config("cpu", {"seed": 1})


def test_is_synthetic(tiny_llama: Path, tmp_path: Path) -> None:
    assert is_synthetic(tiny_llama)
    assert not is_synthetic(tmp_path)


def test_weights_decide_the_note(tiny_llama: Path, tmp_path: Path) -> None:
    """One place reads which weights a checkpoint holds, and one note follows from it."""
    import json

    from bench.plan.checkpoints import MARKER, checkpoint_weights

    assert checkpoint_weights(tiny_llama) == "random" and checkpoint_weights(tmp_path) == "real"
    for marker, weights in (
        ({"synthetic": True}, "random"),
        ({"synthetic": False}, "real"),
        ({"synthetic": True, "weights": "real"}, "real"),  # a builder that records real|random wins
        ({"weights": {"files": 1}}, "random"),  # the synthetic builder's weights dict is not a kind
    ):
        (tmp_path / MARKER).write_text(json.dumps(marker))
        assert checkpoint_weights(tmp_path) == weights, marker
        assert is_synthetic(tmp_path) is (weights == "random")
    (tmp_path / MARKER).write_text("{not json")
    assert checkpoint_weights(tmp_path) == "random"  # never present quality as real by mistake
    assert quality_note(True) == NOTE_SYNTHETIC and "synthetic" not in quality_note(False)


def test_cell_quality_refuses_a_different_vocabulary(tmp_path: Path, tiny_llama: Path) -> None:
    model, tok = _load(tiny_llama, "float32")
    ids = eval_ids(tok, max_tokens=64)
    wrong = torch.log_softmax(torch.randn(64, 100), -1)
    path = save_reference(tmp_path / "wrong.safetensors", wrong, {"tokens": 64}, ids)
    with pytest.raises(ValueError, match="vocabulary"):
        cell_quality(model, tok, "cpu", path, synthetic=True)


def test_integration_helpers(reference: Path, tiny_llama: Path, tmp_path: Path) -> None:
    """What the worker and the runner call: never raise for a missing or failing reference."""
    model, tok = _load(tiny_llama, "bfloat16")
    ok = quality_or_reason(model, tok, "cpu", reference, tiny_llama)
    assert ok["quality.kl"] > 0 and ok["quality.s"] > 0 and "quality.reason" not in ok
    missing = quality_or_reason(model, tok, "cpu", None, tiny_llama)
    assert missing["quality.kl"] is None and "no quality reference" in missing["quality.reason"]
    off = quality_or_reason(
        model, tok, "cpu", None, tiny_llama, reason="quality was turned off (--no-quality)"
    )
    assert off["quality.kl"] is None and off["quality.reason"] == "quality was turned off (--no-quality)"
    task = {"checkpoint_path": str(tiny_llama), "path": str(reference), "device": "cpu"}
    done = reference_task(task)
    assert done["path"] == str(reference) and done["tokens"] == 1024 and done["knobs"]["dtype"] == "float32"
    bad = reference_task({**task, "checkpoint_path": str(tmp_path)})
    assert "could not be computed" in bad["reason"]
