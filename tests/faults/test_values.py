"""Fault rows 5 and 6 (spec part) of issue 12: a bad value is refused at the edge with one sentence naming the
flag or field and what it allows, exit 2, before anything is probed, built or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import SpecError
from bench.plan.spec import MatrixSpec
from bench.units import parse_size, positive_int, positive_seconds, shard


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; it must exit 2 and end stderr with one sentence; returns that sentence."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(".") and "Traceback" not in last
    return last


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--timeout", "nan", "not finite"),  # was: no timeout at all (the parent then spins)
        ("--timeout", "inf", "not finite"),
        ("--timeout", "-1", "must be above 0"),  # was: every cell timed out
        ("--timeout", "0", "must be above 0"),  # was: silently 120 s
        ("--budget", "-1", "must be above 0"),  # was: accepted
        ("--budget", "0", "must be above 0"),  # was: silently 1 s
        ("--min-samples", "1", "below 2"),
        ("--min-samples", "2.5", "not a whole number"),
        ("--threads", "0", "below 1"),
        ("--batch", "-3", "below 1"),
        ("--seq", "many", "not a whole number"),
        ("--new-tokens", "0", "below 1"),
        ("--shard", "3/2", "I/N"),
        ("--shard", "0/2", "I/N"),
        ("--vram-limit", "24", "add a unit, e.g. 24GiB"),  # was: 24 bytes
        ("--vram-limit", "lots", "not a size"),
    ],
)
def test_run_refuses_a_bad_value_before_anything_runs(
    flag: str, value: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    last = _refused(["run", flag, value, "--out", str(out)], capsys)
    assert f"argument {flag}: " in last and words in last
    assert not out.exists()  # refused before the run directory was made


@pytest.mark.parametrize("command", ["plan", "estimate"])
def test_shape_flags_are_positive_integers_everywhere(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "argument --batch: " in _refused([command, "--batch", "0"], capsys)


def test_estimate_and_recommend_want_a_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "add a unit, e.g. 24GiB" in _refused(["estimate", "--vram", "24"], capsys)
    last = _refused(["recommend", str(tmp_path), "--vram", "24", "--task", "train"], capsys)
    assert "argument --vram: " in last and "add a unit" in last


def test_validators_accept_what_they_should() -> None:
    assert positive_seconds("0.5", "--timeout") == 0.5
    assert positive_int(" 4 ", "--threads") == 4 and positive_int(3.0, "threads") == 3
    assert shard(" 2 / 4 ") == "2/4"
    assert parse_size("24GiB") == 24 << 30 and parse_size("1.5 G") == 3 << 29


@pytest.mark.parametrize("value", [True, 2.5, "two", None, [1]])
def test_positive_int_refuses_non_integers(value: object) -> None:
    with pytest.raises(SpecError, match=r"^threads=.* whole number"):
        positive_int(value, "threads")


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("model: [1, 2]", "model"),  # was: TypeError
        ("model: 7", "model"),
        ("threads: x", "threads"),
        ("threads: true", "threads"),
        ("name: [a]", "name"),
        ("vram_limit_bytes: 24GiB", "vram_limit_bytes"),
        ("load: [1]", "load"),
        ("{1: 2}", "spec key 1"),
        ("shape: {batch: x}", "shape.batch"),
        ("dtype: 5", "dtype"),
    ],
)
def test_spec_fields_are_type_checked(
    yaml_text: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml_text + "\n")
    with pytest.raises(SpecError, match=field):
        MatrixSpec.from_yaml(spec)
    assert main(["plan", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("loadbench: ") and "\n" not in err and field in err


def test_api_callers_get_the_same_refusals(tmp_path: Path) -> None:
    """RunRequest(timeout_s=0) must not fall back to the default either."""
    from bench.run.session import RunRequest, run_stage

    for kwargs in ({"timeout_s": 0.0}, {"timeout_s": float("nan")}, {"budget_s": -1.0}):
        with pytest.raises(SpecError, match=r"must be above 0|not finite"):
            run_stage(RunRequest(spec=MatrixSpec(), out=tmp_path / "r", **kwargs))  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()
