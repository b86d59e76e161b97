"""`loadbench --help` and `--version`: every subcommand listed once, in the order a user needs them, one
line each at 80 columns; the version is the installed distribution's."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


# The order a user needs them (issue 22); `ab` is listed where it goes once bench/commands has it.
USER_ORDER = (
    "run", "plan", "report", "compare", "ab", "recommend", "estimate", "env", "cache", "checkpoint", "merge", "export"
)  # fmt: skip


def test_every_command_module_is_a_subcommand() -> None:
    modules = sorted(p.stem for p in (ROOT / "bench" / "commands").glob("*.py") if p.stem != "__init__")
    assert sorted(COMMANDS) == modules  # a new module in bench/commands is one name in COMMANDS
    assert len(set(COMMANDS)) == len(COMMANDS)


def test_help_lists_the_commands_in_order_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    lines = build_parser().format_help().splitlines()
    rows = [line.split() for line in lines if line.startswith("    ") and line.split()[0] in COMMANDS]
    assert [row[0] for row in rows] == list(COMMANDS)  # each name starts a row, in COMMANDS' order
    for row in rows:
        assert len(row) > 1, f"`{row[0]}`'s help is not on its name's line"
    for line in lines:
        assert len(line) <= 80, line
    start = lines.index("commands:")
    assert all(not line.startswith(" " * 6) for line in lines[start:] if line.strip()), "a help line wraps"


def test_commands_come_in_the_order_a_user_needs_them() -> None:
    assert set(COMMANDS) <= set(USER_ORDER), set(COMMANDS) - set(USER_ORDER)
    assert tuple(name for name in USER_ORDER if name in COMMANDS) == COMMANDS


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"loadbench {importlib.metadata.version('loadbench')}"


def test_version_imports_no_torch() -> None:
    # `--version` answers before any command's work: no torch, no command's internals
    code = "import sys\nfrom bench.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split()[-1] == "False"
