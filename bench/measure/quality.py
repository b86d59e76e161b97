"""Output quality of a cell against a reference cell of the same model (DESIGN.md section 6).

For every ok cell: the next-token log-probabilities of a fixed English text shipped with the package
(bench/data/eval.txt), compared position by position with those of a reference cell (float32,
unquantized, eager attention on the CPU; bfloat16, unquantized, sdpa on a GPU; see REFERENCE).

- `quality.kl`: mean over positions of KL(reference ‖ cell), in nats;
- `quality.top1_agree`: share of positions where both put their highest probability on the same token;
- `quality.ppl` / `quality.ref_ppl`: perplexity of the text's next tokens under the cell / reference;
- `quality.ppl_delta`: quality.ppl − quality.ref_ppl;
- `quality.note`: which weights were compared (`quality_note`, the one place that says it): on random
  weights (bench.plan.checkpoints' loadbench.json marker) these measure numeric divergence from the
  reference, not task accuracy; on real weights they are the model's own divergence on the text.

The reference is computed once per run (`compute_reference`, in a worker process before the cells)
and cached as safetensors (no pickle): the token ids and the float32 log-probabilities [T, V]. Each
cell then runs `cell_quality`: one extra no-grad pass over the text, chunk by chunk through a KV
cache (so the logits of a chunk, not of the whole text, are alive at once), reading the reference
chunk by chunk as well.

The bitsandbytes CPU trap: this is a no-grad forward, and on CPUs with AVX512-BF16 bitsandbytes
repacks 4-bit weights for inference on the first one (bench.measure.workloads.repacked_for_cpu), after
which gradients through them are wrong. Run the quality pass before the train phase, and let the
worker's existing check reload the model for training; never after LoRA adapters are attached or a
training step has changed the weights.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

# The reference's knobs and file format live in a torch-free module: the run's parent reads them too.
from bench.measure.reference_file import (
    DEFAULT_MAX_TOKENS,
    FORMAT_VERSION,
    META_KEY,
    REFERENCE,
    reference_meta,
    wanted_meta,
)

__all__ = [
    "EVAL_TEXT",
    "NOTE_REAL",
    "NOTE_SYNTHETIC",
    "REFERENCE",
    "Reference",
    "cell_quality",
    "compute_reference",
    "eval_ids",
    "eval_text",
    "is_synthetic",
    "load_reference",
    "logprobs",
    "quality_columns",
    "quality_note",
    "quality_or_reason",
    "reference_config",
    "reference_task",
    "save_reference",
]

EVAL_TEXT = Path(__file__).resolve().parents[1] / "data" / "eval.txt"
NOTE_SYNTHETIC = "synthetic weights: numeric divergence, not task accuracy"
NOTE_REAL = "real weights: the cell's divergence from the reference cell on the evaluation text"
DEFAULT_CHUNK = 512


class Reference(NamedTuple):
    """A loaded reference: float32 log-probabilities [T, V], its metadata and the token ids [T]."""

    logprobs: torch.Tensor
    meta: dict[str, Any]
    ids: torch.Tensor


# ------------------------------------------------------------------------------------------------ text


def eval_text() -> str:
    """The evaluation text shipped with the package."""
    return EVAL_TEXT.read_text(encoding="utf-8")


def _max_positions(tokenizer: Any, model_config: Any = None) -> int | None:
    limits = []
    if model_config is not None:
        limits.append(getattr(model_config, "max_position_embeddings", None))
    limits.append(getattr(tokenizer, "model_max_length", None))
    sane = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**8]
    return min(sane) if sane else None


def eval_ids(
    tokenizer: Any, max_tokens: int = 2048, max_positions: int | None = None, model_config: Any = None
) -> torch.Tensor:
    """The evaluation text's token ids (1-D, int64), truncated to `max_tokens` and to the model's positions.

    The model's limit is `max_positions` when given, else the smaller of the model config's
    max_position_embeddings and the tokenizer's model_max_length. No special tokens are added, so
    the ids depend on the text and the tokenizer only.
    """
    if max_tokens < 2:
        raise ValueError(f"max_tokens={max_tokens} must be at least 2 (one position and its next token).")
    ids = tokenizer(eval_text(), add_special_tokens=False, return_attention_mask=False, verbose=False)[
        "input_ids"
    ]
    limit = max_tokens
    positions = max_positions if max_positions is not None else _max_positions(tokenizer, model_config)
    if positions is not None:
        limit = min(limit, positions)
    return torch.tensor(ids[:limit], dtype=torch.long)


# ---------------------------------------------------------------------------------------- log-probs


def _cache_kwarg(model: Any) -> str:
    """transformers 5.2x renamed forward's `past_key_values` to `cache`; use whichever this one has."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older signatures take no config
        return DynamicCache()


def iter_logprobs(
    model: Any, ids: torch.Tensor, device: str | torch.device, chunk: int = DEFAULT_CHUNK
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, float32 log-softmax of positions start..start+n) per chunk, on the CPU.

    The text goes through the model `chunk` tokens at a time with a KV cache, so every position
    sees its whole left context (as one forward would) while only one chunk's logits and
    activations are alive. No grad; the model is put in eval mode.
    """
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D token ids, not shape {tuple(ids.shape)}.")
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be positive.")
    model.eval()
    cache = _new_cache(model)
    kwarg = _cache_kwarg(model)
    row = ids.to(device).unsqueeze(0)
    for start in range(0, row.shape[1], chunk):
        part = row[:, start : start + chunk]
        with torch.no_grad(), _quiet_int8_cast():
            out = model(input_ids=part, use_cache=True, **{kwarg: cache})
            lp = torch.log_softmax(out.logits[0].float(), dim=-1).cpu()
        del out
        yield start, lp


class _DropInt8CastNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


@contextlib.contextmanager
def _quiet_int8_cast() -> Iterator[None]:
    """bitsandbytes 8-bit logs a warning on every matmul of a non-float16 input; one pass over the
    evaluation text would write thousands of identical lines into the cell's log."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    notice = _DropInt8CastNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def logprobs(
    model: Any, ids: torch.Tensor, device: str | torch.device, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """Float32 log-softmax over the vocabulary for every position of `ids`: a [T, V] CPU tensor,
    filled chunk by chunk (never two copies of it)."""
    out: torch.Tensor | None = None
    for start, lp in iter_logprobs(model, ids, device, chunk):
        if out is None:
            out = torch.empty((ids.shape[0], lp.shape[1]), dtype=torch.float32)
        out[start : start + lp.shape[0]] = lp
    if out is None:
        raise ValueError("ids is empty: there is nothing to score.")
    return out


# ------------------------------------------------------------------------------------------ storage


def save_reference(
    path: str | Path, logprobs: torch.Tensor, meta: Mapping[str, Any], ids: torch.Tensor | None = None
) -> Path:
    """Write a reference as safetensors (tensors `logprobs` float32 [T, V] and `ids` int64 [T]) with
    `meta` as JSON in the header; atomically (a temporary file renamed into place)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lp = logprobs.detach().to("cpu", torch.float32).contiguous()
    if lp.dim() != 2:
        raise ValueError(f"logprobs must be [T, V], not shape {tuple(lp.shape)}.")
    tensors = {"logprobs": lp}
    if ids is not None:
        if ids.shape != (lp.shape[0],):
            raise ValueError(f"ids has shape {tuple(ids.shape)}, expected ({lp.shape[0]},).")
        tensors["ids"] = ids.detach().to("cpu", torch.long).contiguous()
    header = {META_KEY: json.dumps({"format": FORMAT_VERSION, **meta}, default=str)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    """The reference's metadata, read as the run's parent reads it (bench.measure.reference_file)."""
    return reference_meta(path)[0]


def load_reference(path: str | Path) -> Reference:
    """Read a reference written by save_reference (safetensors only: no code runs on load)."""
    from safetensors import safe_open

    path = Path(path)
    meta = _read_meta(path)
    with safe_open(str(path), framework="pt") as f:
        lp = f.get_tensor("logprobs")
        ids = f.get_tensor("ids") if "ids" in set(f.keys()) else torch.empty(0, dtype=torch.long)
    return Reference(lp, meta, ids)


# ----------------------------------------------------------------------------------------- metrics


def _chunk_stats(
    cell: torch.Tensor, ref: torch.Tensor, targets: torch.Tensor
) -> tuple[float, int, float, float]:
    """Sums over rows: KL(ref‖cell), top-1 agreements, cell NLL, ref NLL (float64 accumulation)."""
    cell = cell.float()
    ref = ref.float()
    if cell.shape != ref.shape:
        raise ValueError(f"cell log-probs {tuple(cell.shape)} and reference {tuple(ref.shape)} differ.")
    # a cell can underflow to -inf where the reference has mass: cap so KL stays finite but large
    cell = cell.clamp_min(-1e4)
    kl = (ref.exp() * (ref - cell)).sum(dim=-1).double().sum().item()
    agree = int((cell.argmax(dim=-1) == ref.argmax(dim=-1)).sum().item())
    idx = targets.view(-1, 1)
    nll_cell = -cell.gather(1, idx).double().sum().item()
    nll_ref = -ref.gather(1, idx).double().sum().item()
    return kl, agree, nll_cell, nll_ref


def _columns(
    kl: float, agree: int, nll_cell: float, nll_ref: float, n: int, synthetic: bool
) -> dict[str, Any]:
    ppl = math.exp(nll_cell / n)
    ref_ppl = math.exp(nll_ref / n)
    out: dict[str, Any] = {
        "quality.kl": max(kl / n, 0.0),
        "quality.top1_agree": agree / n,
        "quality.ppl": ppl,
        "quality.ref_ppl": ref_ppl,
        "quality.ppl_delta": ppl - ref_ppl,
        "quality.positions": n,
    }
    out["quality.note"] = quality_note(synthetic)
    return out


def quality_note(synthetic: bool) -> str:
    """The one place that says which weights quality compared: random (no task accuracy) or real."""
    return NOTE_SYNTHETIC if synthetic else NOTE_REAL


def quality_columns(
    cell_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, ids: torch.Tensor, synthetic: bool
) -> dict[str, Any]:
    """Quality columns from full [T, V] log-probs: positions 0..T-2, each predicting ids[1:]."""
    n = int(ids.shape[0]) - 1
    if n < 1:
        raise ValueError("need at least two token ids to score a next token.")
    kl, agree, nc, nr = _chunk_stats(cell_logprobs[:n], ref_logprobs[:n], ids[1:].to(torch.long))
    return _columns(kl, agree, nc, nr, n, synthetic)


# --------------------------------------------------------------------------------- reference / cells


def reference_config(cell_or_device: Any, override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Knobs of the reference cell ({dtype, quant, attn}) for a device ("cpu", "cuda:0") or a Cell.

    A Cell's device is the one its loader config resolves to on this host (CUDA when available).
    `override` replaces any of the knobs (e.g. {"attn": "sdpa"}).
    """
    if isinstance(cell_or_device, (str, torch.device)):
        device = str(cell_or_device)
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "cuda" if device.startswith("cuda") else "cpu"
    knobs = dict(REFERENCE[kind])
    if override:
        unknown = set(override) - set(knobs)
        if unknown:
            raise ValueError(f"reference override {sorted(unknown)[0]!r} is not one of: {', '.join(knobs)}.")
        knobs.update(override)
    return knobs


def is_synthetic(checkpoint: str | Path) -> bool:
    """Whether a checkpoint holds random weights (bench.plan.checkpoints.checkpoint_weights)."""
    from bench.plan.checkpoints import checkpoint_weights

    return checkpoint_weights(checkpoint) == "random"


def compute_reference(
    checkpoint: str | Path,
    device: str,
    path: str | Path,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    chunk: int = DEFAULT_CHUNK,
    override: Mapping[str, Any] | None = None,
) -> Path:
    """Load the reference cell of `checkpoint`, score the evaluation text and save it to `path`.

    Meant to run once per run, in a worker process, before the cells. Returns `path`; when `path`
    already holds a reference for the same checkpoint, knobs and length it is kept as it is.
    """
    from bench.plan.checkpoints import checkpoint_fingerprint
    from bench.plan.matrix import QUANT_VARIANTS
    from loader import LoadConfig, current_host, get_model, get_tokenizer

    checkpoint = Path(checkpoint)
    path = Path(path)
    knobs = reference_config(device, override)
    fingerprint = checkpoint_fingerprint(checkpoint)
    want = wanted_meta(fingerprint, knobs, max_tokens)
    if path.is_file():
        try:
            meta = _read_meta(path)
            if {k: meta.get(k) for k in want} == want:
                return path
        except (OSError, ValueError):
            pass
    config = LoadConfig(
        str(checkpoint),
        dtype=knobs["dtype"],
        attn_implementation=knobs["attn"],
        device=device if device.startswith("cuda") else "cpu",
        **QUANT_VARIANTS[knobs["quant"]],
    )
    tokenizer = get_tokenizer(config)
    model = get_model(config, current_host(), training=False)
    ids = eval_ids(tokenizer, max_tokens, model_config=model.config)
    lp = logprobs(model, ids, device, chunk)
    meta = {
        **want,
        "device": device,
        "tokens": int(ids.shape[0]),
        "vocab": int(lp.shape[1]),
        "checkpoint": str(checkpoint),
        "synthetic": is_synthetic(checkpoint),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    return save_reference(path, lp, meta, ids=ids)


def cell_quality(
    model: Any,
    tokenizer: Any,
    device: str,
    ref_path: str | Path,
    synthetic: bool,
    chunk: int = DEFAULT_CHUNK,
) -> dict[str, Any]:
    """Quality columns of a loaded cell against the cached reference: one chunked no-grad pass.

    The reference's own token ids are scored (the same checkpoint's tokenizer made them; a
    mismatch in length or vocabulary is an error, not a silent misalignment). Reference rows
    are read from the file a chunk at a time.
    """
    from safetensors import safe_open

    ref_path = Path(ref_path)
    meta = _read_meta(ref_path)
    with safe_open(str(ref_path), framework="pt") as f:
        ids = f.get_tensor("ids") if "ids" in set(f.keys()) else None
        if ids is None:
            ids = eval_ids(tokenizer, int(meta.get("tokens", 2048)), model_config=model.config)
        rows = f.get_slice("logprobs")
        shape = rows.get_shape()
        if shape[0] != ids.shape[0]:
            raise ValueError(f"reference has {shape[0]} positions but {ids.shape[0]} token ids.")
        n = int(ids.shape[0]) - 1
        kl = nll_cell = nll_ref = 0.0
        agree = 0
        for start, lp in iter_logprobs(model, ids, device, chunk):
            stop = min(start + lp.shape[0], n)
            if stop <= start:
                break
            if lp.shape[1] != shape[1]:
                raise ValueError(
                    f"the cell's vocabulary ({lp.shape[1]}) differs from the reference's ({shape[1]})."
                )
            ref = rows[start:stop]
            k, a, nc, nr = _chunk_stats(lp[: stop - start], ref, ids[start + 1 : stop + 1])
            kl, agree, nll_cell, nll_ref = kl + k, agree + a, nll_cell + nc, nll_ref + nr
    return _columns(kl, agree, nll_cell, nll_ref, n, synthetic)


# ------------------------------------------------------------------------------------- integration


def quality_or_reason(
    model: Any,
    tokenizer: Any,
    device: str,
    ref_path: str | Path | None,
    checkpoint: str | Path,
    chunk: int = DEFAULT_CHUNK,
    reason: str | None = None,
) -> dict[str, Any]:
    """What a cell's record gets: cell_quality's columns and `quality.s`, or null columns and
    `quality.reason` when there is no reference or the pass fails (the cell itself stays ok).

    Call it after the load phase's memory columns and before the next phase's PhaseMemory.start(),
    i.e. before any training step has changed the weights. On CUDA the allocator's cache is emptied
    afterwards so the next phase's NVML numbers do not carry this pass's blocks.
    """
    import time

    columns = ("quality.kl", "quality.top1_agree", "quality.ppl", "quality.ref_ppl", "quality.ppl_delta")
    if ref_path is None or not Path(ref_path).is_file():
        why = reason or "no quality reference was computed for this run"
        return {**dict.fromkeys(columns), "quality.reason": why}
    start = time.perf_counter()
    try:
        out = cell_quality(model, tokenizer, device, ref_path, is_synthetic(checkpoint), chunk)
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:  # a quality failure is recorded, it does not fail the cell
        return {**dict.fromkeys(columns), "quality.reason": f"{type(exc).__name__}: {exc}"}
    finally:
        if str(device).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()
    out["quality.s"] = time.perf_counter() - start
    return out


def reference_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Body of a `{"kind": "quality_reference"}` worker task: compute (or find) the run's reference.

    task: checkpoint_path, path (where the safetensors go), device ("cpu" / "cuda"), optional
    max_tokens, chunk, override (reference knobs). Returns {"path", "seconds", "tokens", "knobs"}
    or {"reason"} — never raises, so the runner can record why quality columns are null.
    """
    import time

    start = time.perf_counter()
    try:
        path = compute_reference(
            task["checkpoint_path"],
            task.get("device", "cpu"),
            task["path"],
            max_tokens=int(task.get("max_tokens", DEFAULT_MAX_TOKENS)),
            chunk=int(task.get("chunk", DEFAULT_CHUNK)),
            override=task.get("override"),
        )
        meta = _read_meta(Path(path))
    except Exception as exc:
        return {"reason": f"the quality reference could not be computed: {type(exc).__name__}: {exc}"}
    return {
        "path": str(path),
        "seconds": time.perf_counter() - start,
        "tokens": meta.get("tokens"),
        "knobs": meta.get("knobs"),
    }
