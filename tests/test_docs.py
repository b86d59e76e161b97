"""The docs stay true to the code: docs/cli.md is what scripts/cli_docs.py writes from the real parsers; every
`loadbench ...` command in a code block of README.md or docs/ parses with the real parser (flags exist, values
valid; a run or plan also builds its spec); every relative link and image resolves, anchors included."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from bench.cli import build_parser
from bench.commands.plan import load_spec

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "docs" / "cli.md"
README_MAX_LINES = 160


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def cli_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_docs", ROOT / "scripts" / "cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- reading markdown ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    argv: list[str]

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: {shlex.join(self.argv)}"


FENCE = re.compile(r"^\s*(```|~~~)")
SHELL_BREAKS = {"|", "||", "&&", ";", ">", ">>", "2>", "&"}


def split_fences(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, text) of the lines inside code blocks, and of those outside."""
    inside, outside, fenced = [], [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        (inside if fenced else outside).append((number, line))
    return inside, outside


def commands_in(page: Path, program: str = "loadbench") -> list[Command]:
    """Every command line of `program` in the page's code blocks (a `$ ` prompt, `\\` continuations and
    trailing comments allowed), cut at the first shell operator."""
    found = []
    lines, _ = split_fences(page.read_text(encoding="utf-8"))
    pending: tuple[int, str] | None = None
    for number, raw in lines:
        line = raw.strip().removeprefix("$ ")
        if pending is not None:
            line = pending[1] + " " + line
            number = pending[0]
            pending = None
        if line.endswith("\\"):
            pending = (number, line[:-1])
            continue
        if not line.startswith(program + " "):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        words = []
        for word in lexer:
            if word in SHELL_BREAKS:
                break
            words.append(word)
        found.append(Command(page, number, words[1:]))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    _, outside = split_fences(page.read_text(encoding="utf-8"))
    found: set[str] = set()
    for _, line in outside:
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            name, n = base, 1
            while name in found:  # GitHub numbers repeated headings
                name, n = f"{base}-{n}", n + 1
            found.add(name)
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<img\s[^>]*src=\"([^\"]+)\"")


def links_in(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every markdown link, image and <img> outside code blocks and code spans."""
    _, outside = split_fences(page.read_text(encoding="utf-8"))
    found = []
    for number, line in outside:
        for match in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            found.append((number, match.group(1) or match.group(2)))
    return found


def broken_link(page: Path, target: str) -> str | None:
    """Why a relative link does not resolve, or None (external links are not fetched)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
        return None
    path_part, _, anchor = target.partition("#")
    file = (page.parent / path_part).resolve() if path_part else page
    if not file.exists():
        return f"{path_part} does not exist"
    if ROOT in page.parents and ROOT not in file.parents:
        return f"{path_part} is outside the repository"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{file.name} has no heading with anchor #{anchor}"
    return None


# --- the checks ---------------------------------------------------------------------------------------------


def test_cli_reference_is_generated_from_the_parsers() -> None:
    assert GENERATED.read_text(encoding="utf-8") == cli_docs().render(), (
        "docs/cli.md is stale: run `python scripts/cli_docs.py` and commit it"
    )


def test_cli_reference_names_every_flag() -> None:
    text = GENERATED.read_text(encoding="utf-8")
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    for name, command in sub.choices.items():  # type: ignore[union-attr]
        assert f"## loadbench {name}" in text
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert f"`{option}`" in text, f"{name} {option} missing from docs/cli.md"
            assert action.help, f"`loadbench {name}` {action.dest} has no help text"


ALL_COMMANDS = [c for page in pages() if page != GENERATED for c in commands_in(page)]


def test_the_docs_show_commands() -> None:
    assert len(ALL_COMMANDS) >= 20
    shown = {c.argv[0] for c in ALL_COMMANDS if c.argv}
    assert {"run", "plan", "report", "compare", "recommend", "estimate"} <= shown


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_every_command_in_the_docs_parses(command: Command) -> None:
    try:
        args = build_parser().parse_args(command.argv)
    except SystemExit as exc:
        pytest.fail(f"{command} does not parse (argparse exit {exc.code})")
    if command.argv[0] in ("run", "plan"):
        sources = [getattr(args, name) for name in ("spec", "recipe") if getattr(args, name)]
        if all((ROOT / source).is_file() for source in sources):  # a user's own file is not in the repo
            load_spec(args)  # axis values and shape: one sentence (SpecError) when one is wrong


def test_every_script_the_docs_run_exists() -> None:
    scripts = [c for page in pages() for c in commands_in(page, "python")]
    named = [(c, w) for c in scripts for w in c.argv if w.startswith("scripts/")]
    assert named, "no `python scripts/...` command found"
    missing = [f"{c}" for c, w in named if not (ROOT / w).is_file()]
    assert not missing, "\n".join(missing)


def test_every_relative_link_resolves() -> None:
    broken = [
        f"{page.relative_to(ROOT)}:{line}: {target}: {why}"
        for page in pages()
        for line, target in links_in(page)
        if (why := broken_link(page, target))
    ]
    assert not broken, "\n".join(broken)


def test_readme_is_short_and_has_its_picture() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    images = [t for _, t in links_in(ROOT / "README.md") if t.endswith(".png")]
    assert images and all((ROOT / t).is_file() for t in images)


# --- the checker itself -------------------------------------------------------------------------------------


def test_checker_reads_commands_links_and_anchors(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Top `title`\n\n## What fits?\n\n[ok](#what-fits) [bad](#nowhere) [file](other.md) ![x](img.png)\n"
        "`[not](a-link.md)`\n\n```bash\n$ loadbench run --dtype bfloat16 \\\n   --quant nf4  # a comment\n"
        "loadbench compare A B | tee out.md\n[in](code.md)\n```\n"
    )
    (tmp_path / "other.md").write_text("# Other\n")
    assert anchors(page) == {"top-title", "what-fits"}
    assert [t for _, t in links_in(page)] == ["#what-fits", "#nowhere", "other.md", "img.png"]
    assert [c.argv for c in commands_in(page)] == [
        ["run", "--dtype", "bfloat16", "--quant", "nf4"],
        ["compare", "A", "B"],
    ]
    assert broken_link(page, "#what-fits") is None and broken_link(page, "other.md") is None
    assert "no heading" in (broken_link(page, "#nowhere") or "")
    assert "does not exist" in (broken_link(page, "img.png") or "")
    assert broken_link(page, "https://example.com/x") is None
