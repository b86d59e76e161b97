"""The measured code: prefill, train step, decode. Each returns flat metric columns.

Guards raise `InvalidMeasurement`, which ends the cell as `invalid` with the reason: a number measured
on a broken computation (non-finite loss, no gradient, wrong token count) is not a number to publish.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.measure.probes import Budget, Stats, measure
from bench.plan.spec import LORA_DEFAULTS
from bench.schema import DECODE_CACHE_COLUMN
from loader.model import enable_checkpointing
from loader.quantization import METHODS


class InvalidMeasurement(RuntimeError):
    """A measurement guard failed; the cell's numbers would be meaningless."""


@dataclass
class Workload:
    """What every workload needs: the model, input ids and how to wait for the device."""

    model: Any
    input_ids: torch.Tensor
    new_tokens: int
    budget: Budget
    sync: Callable[[], None]
    pad_token_id: int | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)  # measured spans, for energy per token

    def add_window(self, phase: str, stats: Stats, tokens_per_sample: int) -> None:
        if stats.window is not None:
            start, end = stats.window
            self.windows.append(
                {"phase": phase, "start": start, "end": end, "tokens": tokens_per_sample * stats.n}
            )

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())


def make_inputs(vocab: int, batch: int, seq: int, device: str, seed: int = 0) -> torch.Tensor:
    """Random token ids, seeded, inside the tokenizer's vocabulary (not the padded embedding)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=gen).to(device)


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """NaN/Inf guard through a float32 sum: any NaN or Inf makes the sum non-finite, and unlike
    `isfinite(t).all()` it allocates no tensor-sized temporaries that would inflate the phase's peak."""
    if not torch.isfinite(tensor.sum(dtype=torch.float32)):
        raise InvalidMeasurement(f"{what} contains NaN or Inf values.")


def first_forward(w: Workload) -> float:
    """The first no-grad forward after loading (lazy initialisation, kernel selection): seconds."""
    w.model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        out = w.model(w.input_ids, use_cache=False)
    w.sync()
    elapsed = time.perf_counter() - start
    check_finite(out.logits, "the first forward's logits")
    return elapsed


def prefill(w: Workload) -> dict[str, Any]:
    """No-grad forward over batch × seq tokens, as an eval or prompt pass runs."""
    w.model.eval()
    last: dict[str, Any] = {}

    def step() -> None:
        with torch.no_grad():
            last["logits"] = w.model(w.input_ids, use_cache=False).logits

    latency = measure(step, w.budget, w.sync)
    w.add_window("prefill", latency, w.tokens)
    check_finite(last["logits"], "prefill logits")
    return {
        **latency.columns("prefill.latency_s"),
        **latency.map(lambda s: w.tokens / s).columns("prefill.tokens_per_s"),
    }


def trainable_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def check_gradients(model: Any) -> None:
    """Every trainable parameter got a finite gradient: catches layers that silently stop backprop."""
    grads = [(n, p.grad) for n, p in trainable_parameters(model)]
    missing = [n for n, g in grads if g is None]
    if missing:
        raise InvalidMeasurement(
            f"{len(missing)} trainable parameter(s) got no gradient after backward (first: {missing[0]}); "
            "gradients stop somewhere in the model."
        )
    bad = [n for n, g in grads if g is not None and not torch.isfinite(g).all()]
    if bad:
        raise InvalidMeasurement(f"non-finite gradient in {len(bad)} parameter(s) (first: {bad[0]}).")


def attach_lora(
    model: Any,
    gradient_checkpointing: bool,
    *,
    kbit: bool = True,
    settings: dict[str, Any] | None = None,
    quantization: str | None = None,
) -> Any:
    """LoRA adapters (peft) with the matrix's one setting; on k-bit weights first QLoRA's
    prepare_model_for_kbit_training, so bf16 + lora against nf4 + lora is the QLoRA comparison.

    A quantizer that prepare_model_for_kbit_training cannot take (quanto refuses the float32 upcast of
    its weights) gets the rest of it: the base frozen, gradients into the inputs, checkpointing."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    s = {**LORA_DEFAULTS, **(settings or {})}
    method = METHODS.get(quantization or "")
    if kbit and method is not None and not method.kbit_prepare:
        for param in model.parameters():
            param.requires_grad = False
        model.enable_input_require_grads()
        if gradient_checkpointing:
            enable_checkpointing(model, {"use_reentrant": False})
    elif kbit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    targets = s["target_modules"]
    lora = LoraConfig(
        r=int(s["r"]),
        lora_alpha=s["alpha"],
        lora_dropout=float(s["dropout"]),
        target_modules=list(targets) if isinstance(targets, (list, tuple)) else targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def repacked_for_cpu(model: Any) -> bool:
    """bitsandbytes repacks Linear4bit weights on the first no-grad CPU forward (AVX512-BF16 hosts);
    the repacked kernel has no autograd, so gradients through those layers are silently wrong."""
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            return True
    return False


_NO_AUTOGRAD = "autograd kernel was not registered"


@contextlib.contextmanager
def gradient_flow_checked(model: Any) -> Iterator[None]:
    """Refuse a forward in which a frozen (quantized) base layer under a LoRA adapter turns an input that
    carries gradients into an output that does not.

    That is how a quantizer's inference-only kernel stops backprop silently (the adapters still get
    gradients through the residual stream and their own branch, so a missing gradient alone would not
    show it); bitsandbytes' repacked CPU 4-bit layers are one case, `repacked_for_cpu` the other check.
    """
    stopped: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def check(module: Any, args: tuple[Any, ...], output: Any) -> None:
            inputs = [a for a in args if isinstance(a, torch.Tensor)]
            passes_grad = any(a.requires_grad for a in inputs)
            if passes_grad and isinstance(output, torch.Tensor) and not output.requires_grad and not stopped:
                stopped.append(f"{name} ({type(module).__name__})")

        return check

    handles = [
        module.base_layer.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if isinstance(getattr(module, "base_layer", None), torch.nn.Module)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    if stopped:
        raise InvalidMeasurement(
            f"gradients stop at {stopped[0]}: its forward returned an output without autograd history "
            "from an input that had one, so the adapters below it would train on wrong gradients."
        )


def backward_checked(loss: torch.Tensor) -> None:
    """loss.backward(), refusing a backward that ran through an op without an autograd kernel.

    torch only warns there ("silently incorrect behavior"); a gradient measured that way is not a
    training step, so the warning becomes an invalid cell.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss.backward()
    for warning in caught:
        text = str(warning.message)
        if _NO_AUTOGRAD in text:
            op = text.split(": an autograd kernel", 1)[0]
            raise InvalidMeasurement(
                f"backward ran through {op}, which has no autograd kernel, so gradients are wrong."
            )
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def train(w: Workload) -> dict[str, Any]:
    """Forward + backward + AdamW step on the trainable parameters; one sample per step."""
    model = w.model
    if repacked_for_cpu(model):
        raise InvalidMeasurement(
            "bitsandbytes repacked the 4-bit weights for CPU inference (after a no-grad forward); "
            "training through them gives wrong gradients, so train needs a freshly loaded model."
        )
    model.train()
    params = [p for _, p in trainable_parameters(model)]
    if not params:
        raise InvalidMeasurement("the model has no trainable parameters to train.")
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    checked = {"grads": False, "flow": False}

    def step() -> None:
        # the first step (a warm-up) watches every adapter's base layer pass gradients on
        with gradient_flow_checked(model) if not checked["flow"] else contextlib.nullcontext():
            loss = model(w.input_ids, labels=w.input_ids, use_cache=False).loss
        checked["flow"] = True
        if not torch.isfinite(loss):
            raise InvalidMeasurement(f"the training loss is not finite ({loss.item()}).")
        if not checked["grads"]:
            backward_checked(loss)
            check_gradients(model)
        else:
            loss.backward()
            checked["grads"] = True
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_s = measure(step, w.budget, w.sync)
    w.add_window("train", step_s, w.tokens)
    return {
        **step_s.columns("train.step_s"),
        **step_s.map(lambda s: w.tokens / s).columns("train.tokens_per_s"),
        "train.trainable_params": sum(p.numel() for p in params),
    }


class _TokenClock:
    """A generate() streamer that timestamps each step: the first put is the prompt, then one per token."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.sync()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def generate_once(w: Workload, use_cache: bool, extra: dict[str, Any]) -> tuple[float, float, float]:
    """One greedy generation of exactly new_tokens per sequence: (ttft, tpot, total) seconds.

    `extra`: the decode mode's generate() arguments (bench.measure.decoding.generate_kwargs).
    """
    prompt_len = w.input_ids.shape[1]
    clock = _TokenClock(w.sync)
    start = time.perf_counter()
    with torch.no_grad():
        out = w.model.generate(
            w.input_ids,
            attention_mask=torch.ones_like(w.input_ids),
            max_new_tokens=w.new_tokens,
            min_new_tokens=w.new_tokens,
            do_sample=False,
            use_cache=use_cache,
            streamer=clock,
            pad_token_id=w.pad_token_id,
            **extra,
        )
    w.sync()
    end = time.perf_counter()
    produced = out.shape[1] - prompt_len
    if produced != w.new_tokens:
        raise InvalidMeasurement(f"generate produced {produced} new tokens per sequence, not {w.new_tokens}.")
    token_times = clock.times[1:]  # times[0] is the prompt being handed over
    ttft = token_times[0] - start
    tpot = (token_times[-1] - token_times[0]) / (len(token_times) - 1) if len(token_times) > 1 else math.nan
    return ttft, tpot, end - start


def decode(
    w: Workload, use_cache: bool, extra: dict[str, Any] | None = None, compiled: Any = None
) -> dict[str, Any]:
    """Greedy generation of exactly new_tokens per sequence: time to first token and per output token.

    `extra`: the decode mode's generate() arguments. `compiled`: a compiled mode's CompileWarmup
    (bench.measure.decoding), made before this is called, so the warm-ups and samples here hold no
    compiling; its columns (decode.compile_s beyond this run's median generation) join the output, and a
    timed sample that compiled again makes the cell invalid.
    """
    w.model.eval()
    runs: list[tuple[float, float, float]] = []  # (ttft, tpot, total)
    timed = measure(lambda: runs.append(generate_once(w, use_cache, extra or {})), w.budget, w.sync)
    runs = runs[w.budget.warmup :]
    batch = w.input_ids.shape[0]
    w.add_window("decode", timed, batch * w.new_tokens)

    # every per-run series keeps the blocks and stop reason of the generations it came from
    def series(i: int) -> Stats:
        return Stats([r[i] for r in runs], block_ids=timed.block_ids, stop=timed.stop)

    total = series(2)
    out = {
        DECODE_CACHE_COLUMN: use_cache,
        **series(0).columns("decode.ttft_s"),
        **total.map(lambda s: batch * w.new_tokens / s).columns("decode.tokens_per_s"),
    }
    if compiled is not None:
        compiled.check_no_recompiles()
        out.update(compiled.columns(total.median))
    if w.new_tokens > 1:
        out.update(series(1).columns("decode.tpot_s"))
    else:
        out.update(
            {"decode.tpot_s": None, "decode.tpot_s.reason": "new_tokens=1 has no second token to time"}
        )
    return out
