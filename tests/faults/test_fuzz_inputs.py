"""Property-based (hypothesis): random specs, recipes, CLI values and damaged run directories fed to plan, the
`run` paths that stop before any cell runs, report, compare and merge. Whatever the input, the command
exits 0, 1 (compare: a regression) or 2 with a sentence: never a traceback, never a half-written file.

The default example counts keep this under a few seconds of work per test; `-m slow` runs more."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import build_parser, main
from bench.commands.plan import load_spec
from bench.errors import SpecError
from bench.measure.outcome import CellOutcome
from bench.plan.capabilities import probe_cached
from bench.plan.matrix import MatrixSpec
from bench.plan.planning import make_plan
from bench.run.compose import ModelFacts, compose_record
from bench.run.store import RunStore
from bench.schema import STATUSES

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # each renders
MORE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values YAML can hold, and the values the spec's own vocabulary uses (so some examples get far).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        ["tiny-llama", "float32", "bfloat16", "none", "nf4", "sdpa", "eager", "on", "off", "1/2"]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=4,
)
SPEC_KEYS = [*(f for f in MatrixSpec.__dataclass_fields__), "shape", "batch", "unknown"]
specs = st.dictionaries(st.sampled_from(SPEC_KEYS) | st.text(max_size=6), values, max_size=5)
RECIPE_KEYS = [
    "model_name_or_path",
    "model_revision",
    "torch_dtype",
    "attn_implementation",
    "gradient_checkpointing",
    "load_in_4bit",
    "load_in_8bit",
    "bnb_4bit_quant_type",
    "per_device_train_batch_size",
    "max_length",
    "max_seq_length",
    "chat_template",
    "trust_remote_code",
]
recipes = st.dictionaries(st.sampled_from(RECIPE_KEYS), values, max_size=6)
RUN_FLAGS = [
    "--timeout",
    "--budget",
    "--min-samples",
    "--shard",
    "--vram-limit",
    "--batch",
    "--seq",
    "--new-tokens",
    "--threads",
    "--dtype",
    "--quant",
    "--attn",
    "--grad-ckpt",
    "--cache",
    "--workloads",
]
flag_values = st.one_of(
    st.text(max_size=10).filter(lambda t: not t.startswith("-")),
    st.sampled_from(
        ["0", "-1", "nan", "inf", "1e309", "24", "24GiB", "1/2", "2/1", "2.5", "3", "sdpa,eager"]
    ),
)


def _exit_code(argv: list[str]) -> int:
    """main(argv)'s exit code; argparse's refusals (SystemExit 2) count as exit codes, anything else raises."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _half_written(root: Path) -> list[Path]:
    """The temporary files of an atomic write that was not finished (bench.fileio's naming)."""
    return list(root.rglob(".*.tmp"))


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lbfuzz") as tmp:
        yield Path(tmp)


# -- specs and recipes: plan (nothing is built or run for a refusal) -------------------------------------------


def _check_plan_of(data: Any, kind: str) -> None:
    with _scratch() as tmp:
        path = tmp / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        flag = [str(path)] if kind == "spec" else ["--recipe", str(path)]
        assert _exit_code(["plan", *flag]) in (0, 2)


@FAST
@given(specs)
def test_random_specs_plan_or_refuse(data: dict[str, Any]) -> None:
    _check_plan_of(data, "spec")


@FAST
@given(recipes)
def test_random_recipes_plan_or_refuse(data: dict[str, Any]) -> None:
    _check_plan_of(data, "recipe")


# -- CLI values: `run` parses and builds its spec, then stops before any cell runs -------------------------------


def _check_run_values(pairs: list[tuple[str, str]]) -> None:
    argv = ["run", *(f"{flag}={value}" for flag, value in pairs)]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2
        return
    for name in ("timeout", "budget"):
        value = getattr(args, name)
        assert value is None or 0 < value < float("inf")
    assert args.min_samples >= 2 and (args.vram_limit is None or args.vram_limit > 0)
    try:
        spec = load_spec(args)
    except SpecError:
        return
    assert all(getattr(spec.shape, k) >= 1 for k in ("batch", "seq", "new_tokens")) and spec.threads >= 1


@FAST
@given(st.lists(st.tuples(st.sampled_from(RUN_FLAGS), flag_values), max_size=4))
def test_random_run_values_parse_or_refuse(pairs: list[tuple[str, str]]) -> None:
    _check_run_values(pairs)


# -- damaged run directories: report, compare, merge ------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two run directories of the default preset, written as `run` writes them (run.json by RunStore.create,
    records by compose_record and RunStore.append), with random outcomes and timings: nothing runs."""
    spec = MatrixSpec.from_yaml(Path(__file__).resolve().parents[2] / "bench" / "presets" / "default.yaml")
    plan = make_plan(spec, probe_cached().host)
    # The plan's model config, as the session reads it: plan builds no weights, so on a fresh machine the
    # checkpoint directory does not exist yet.
    assert plan.model is not None
    config = plan.model.config
    dirs = []
    for seed in (1, 2):
        rng = random.Random(seed)
        meta = {
            "spec_hash": spec.spec_hash(),
            "spec": spec.to_dict(),
            "plan": plan.to_dict(),
            "shard": None,
            "checkpoint": {"path": str(plan.checkpoint), "fingerprint": plan.fingerprint},
            "environment": probe_cached().to_dict(),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        store = RunStore.create(tmp_path_factory.mktemp(f"run{seed}"), meta)
        for cell in plan.cells:
            status = "skipped" if cell.skip_reason else rng.choice([s for s in STATUSES if s != "skipped"])
            samples = [rng.uniform(100, 200) for _ in range(5)]
            metrics = {"prefill.tokens_per_s": sorted(samples)[2], "prefill.tokens_per_s.samples": samples}
            outcome = CellOutcome(
                status, None if status == "ok" else "fuzz", metrics if status == "ok" else {}
            )
            store.append(compose_record(cell, outcome, model=ModelFacts(config, "cpu"), host="fuzz"))
        dirs.append(store.directory)
    return dirs[0], dirs[1]


DAMAGES = ("truncate", "flip", "garbage_line", "drop_run_json", "bad_run_json", "empty_records", "none")


def _damage(directory: Path, how: str, where: float, byte: int) -> None:
    records, run_json = directory / "records.jsonl", directory / "run.json"
    data = records.read_bytes()
    at = int(where * len(data))
    if how == "truncate":
        records.write_bytes(data[:at])
    elif how == "flip":
        records.write_bytes(data[:at] + bytes([byte]) + data[at + 1 :])
    elif how == "garbage_line":
        records.write_bytes(data + bytes([byte]) * 7 + b"\n")
    elif how == "drop_run_json":
        run_json.unlink()
    elif how == "bad_run_json":
        run_json.write_bytes(run_json.read_bytes()[: at % 200] + b"\xff")
    elif how == "empty_records":
        records.write_bytes(b"")


def _check_readers(run_dirs: tuple[Path, Path], how: str, where: float, byte: int, which: int) -> None:
    import shutil

    with _scratch() as tmp:
        base, new = tmp / "base", tmp / "new"
        shutil.copytree(run_dirs[0], base)
        shutil.copytree(run_dirs[1], new)
        _damage([base, new][which], how, where, byte)
        assert _exit_code(["report", str(base), "--out", str(tmp / "report")]) in (0, 2)
        assert _exit_code(["compare", str(base), str(new), "--out", str(tmp / "cmp.md")]) in (0, 1, 2)
        assert _exit_code(["merge", str(base), str(new), "--out", str(tmp / "merged")]) in (0, 2)
        assert _half_written(tmp) == []


@FEW
@given(st.sampled_from(DAMAGES), st.floats(0, 1), st.integers(0, 255), st.integers(0, 1))
def test_damaged_run_directories_are_read_or_refused(
    run_dirs: tuple[Path, Path], how: str, where: float, byte: int, which: int
) -> None:
    _check_readers(run_dirs, how, where, byte, which)


# -- the slow variant: more examples of each ---------------------------------------------------------------------


@pytest.mark.slow
@MORE
@given(specs, recipes, st.lists(st.tuples(st.sampled_from(RUN_FLAGS), flag_values), max_size=6))
def test_many_random_inputs(
    spec: dict[str, Any], recipe: dict[str, Any], pairs: list[tuple[str, str]]
) -> None:
    _check_plan_of(spec, "spec")
    _check_plan_of(recipe, "recipe")
    _check_run_values(pairs)


@pytest.mark.slow
@MORE
@given(st.sampled_from(DAMAGES), st.floats(0, 1), st.integers(0, 255), st.integers(0, 1))
def test_many_damaged_run_directories(
    run_dirs: tuple[Path, Path], how: str, where: float, byte: int, which: int
) -> None:
    _check_readers(run_dirs, how, where, byte, which)
