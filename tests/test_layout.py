"""The import layers of loader/ and bench/ (DESIGN.md section 2), checked from the source, not by importing it.

Every import of every module counts: top level, lazy (inside a function), under `if TYPE_CHECKING`, relative
(resolved against the module's package), and `importlib.import_module("...")` with a literal name. A
package's `__init__` is a module of its own. The stages, first to last:

    leaves: bench.schema, bench.errors, bench.fileio, bench.units, bench (the package), loader.*
    -> bench.plan -> bench.measure -> bench.run -> bench.analysis -> bench.commands
    -> bench.cli, bench.pytest_plugin, bench.pytest_matrix

A module may import its own stage and earlier ones only; loader imports nothing of bench; no import cycle
between any two modules (also within a stage); no module over MAX_LINES lines; a package of more than
MAX_UNNAMED modules (sub-packages' included) names its sub-stages: its `__init__` docstring names every
module and sub-package it holds directly, so a newcomer sees the groups before opening a file.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("loader", "bench")
MAX_LINES = 500
MAX_UNNAMED = 15

LEAVES = ("bench", "bench.schema", "bench.errors", "bench.fileio", "bench.units", "loader")
# (stage name, module-name prefixes), first to last.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("leaves", LEAVES),
    ("plan", ("bench.plan",)),
    ("measure", ("bench.measure",)),
    ("run", ("bench.run",)),
    ("analysis", ("bench.analysis",)),
    ("commands", ("bench.commands",)),
    ("top", ("bench.cli", "bench.pytest_plugin", "bench.pytest_matrix")),
)


# --- collecting the graph -----------------------------------------------------------------------------------


def module_files(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Module name -> file for every .py under the packages (`pkg/__init__.py` is module `pkg`)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module an import of `name` runs: `name` itself, else its longest prefix that is a module."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _base_package(module: str, path: Path, level: int) -> str:
    """The package a relative import of `level` dots starts from."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return package


def imports_of(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The project modules `module` imports anywhere in its body (lazy and type-only imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _base_package(module, path, node.level)
                parent = f"{base}.{node.module}" if node.module else base
            else:
                parent = node.module or ""
            # `from p import x`: x is a submodule when one exists, else a name defined in p.
            names = [f"{parent}.{alias.name}" for alias in node.names if alias.name != "*"] or [parent]
            names = [n if n in modules else parent for n in names]
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
            )
        ):
            names = [node.args[0].value]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = module_files(root, packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def stage_of(module: str) -> int | None:
    """The stage index of a module, or None when no stage claims it."""
    for i, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            if module == prefix or (prefix != "bench" and module.startswith(prefix + ".")):
                return i
    return None


@cache
def project_graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


# --- the rules --------------------------------------------------------------------------------------------


def test_every_module_belongs_to_a_stage() -> None:
    unplaced = sorted(m for m in project_graph() if stage_of(m) is None)
    assert not unplaced, f"modules outside every stage (add them to a stage package): {unplaced}"


def test_imports_follow_the_stage_order() -> None:
    graph = project_graph()
    wrong = []
    for module, targets in sorted(graph.items()):
        mine = stage_of(module)
        for target in sorted(targets):
            theirs = stage_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{module} ({STAGES[mine][0]}) imports {target} ({STAGES[theirs][0]})")
    assert not wrong, "imports of a later stage:\n" + "\n".join(wrong)


def test_loader_knows_nothing_of_bench() -> None:
    graph = project_graph()
    wrong = sorted(
        f"{m} imports {t}"
        for m, ts in graph.items()
        if m.split(".")[0] == "loader"
        for t in ts
        if t.split(".")[0] == "bench"
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    found = cycles(project_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_over_the_line_limit() -> None:
    long = {
        name: n
        for name, path in module_files(ROOT).items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by what they hold): {long}"


def unnamed_sub_stages(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, list[str]]:
    """Package -> the modules and sub-packages it holds directly that its `__init__` docstring does not
    name, for every package of more than MAX_UNNAMED modules."""
    modules = module_files(root, packages)
    missing: dict[str, list[str]] = {}
    for package, path in modules.items():
        if path.name != "__init__.py":
            continue
        inside = [m for m in modules if m.startswith(package + ".")]
        if len(inside) <= MAX_UNNAMED:
            continue
        children = sorted({m[len(package) + 1 :].split(".")[0] for m in inside})
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        unnamed = [c for c in children if not re.search(rf"(?<![\w.]){re.escape(c)}(?![\w])", doc)]
        if unnamed:
            missing[package] = unnamed
    return missing


def test_big_packages_name_their_sub_stages() -> None:
    missing = unnamed_sub_stages(ROOT)
    assert not missing, (
        f"packages of more than {MAX_UNNAMED} modules whose __init__ docstring does not name these "
        f"(group them there by sub-stage, or move a group into a sub-package): {missing}"
    )


# --- the checker itself ------------------------------------------------------------------------------------


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_checker_sees_lazy_relative_and_dynamic_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "bench/__init__.py": "",
            "bench/schema.py": "",
            "bench/plan/__init__.py": "from . import matrix\n",
            "bench/plan/matrix.py": "from ..schema import X\nfrom .. import units\n",
            "bench/units.py": "",
            "bench/run/__init__.py": "",
            "bench/run/store.py": "def f():\n    from bench.analysis.frame import g\n",
            "bench/analysis/__init__.py": "",
            "bench/analysis/frame.py": "import importlib\nimportlib.import_module('bench.run.store')\n",
            "bench/measure/__init__.py": "if False:\n    import bench.plan.matrix as m\n",
        },
    )
    graph = import_graph(root, ("bench",))
    assert graph["bench.plan"] == {"bench.plan.matrix"}
    assert graph["bench.plan.matrix"] == {"bench.schema", "bench.units"}
    assert graph["bench.run.store"] == {"bench.analysis.frame"}
    assert graph["bench.analysis.frame"] == {"bench.run.store"}
    assert graph["bench.measure"] == {"bench.plan.matrix"}
    assert stage_of("bench.run.store") < stage_of("bench.analysis.frame")
    assert cycles(graph) == [["bench.analysis.frame", "bench.run.store"]]


def test_cycles_within_a_stage_and_through_a_package_init() -> None:
    graph = {"bench.plan": {"bench.plan.a"}, "bench.plan.a": {"bench.plan"}, "bench.plan.b": set()}
    assert cycles(graph) == [["bench.plan", "bench.plan.a"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_sub_stage_rule_counts_nested_modules_and_reads_the_docstring(tmp_path: Path) -> None:
    files = {"bench/__init__.py": '"""run"""', "bench/run/sub/__init__.py": ""}
    files |= {f"bench/run/m{i}.py": "" for i in range(MAX_UNNAMED - 1)}
    files["bench/run/__init__.py"] = '"""run: m0 m1"""'
    root = _tree(tmp_path, files)
    assert unnamed_sub_stages(root, ("bench",)) == {}  # exactly MAX_UNNAMED modules: nothing asked
    _tree(root, {"bench/run/sub/leaf.py": ""})  # one more, inside a sub-package, counts
    expected = [f"m{i}" for i in range(2, MAX_UNNAMED - 1)] + ["sub"]
    assert unnamed_sub_stages(root, ("bench",)) == {"bench.run": sorted(expected)}
    _tree(root, {"bench/run/__init__.py": '"""' + " ".join(f"m{i}" for i in range(20)) + '\nsub: leaf"""'})
    assert unnamed_sub_stages(root, ("bench",)) == {}
    _tree(root, {"bench/run/__init__.py": '"""m10 m11 m12"""'})  # "m1" inside "m10" is not a name of m1
    assert "m1" in unnamed_sub_stages(root, ("bench",))["bench.run"]


@pytest.mark.parametrize(
    ("module", "stage"),
    [
        ("loader.model", "leaves"),
        ("bench.schema", "leaves"),
        ("bench.plan.estimate", "plan"),
        ("bench.commands.run", "commands"),
        ("bench.cli", "top"),
        ("bench.pytest_plugin", "top"),
    ],
)
def test_stage_of(module: str, stage: str) -> None:
    assert STAGES[stage_of(module)][0] == stage  # type: ignore[index]
    assert stage_of("bench.planning") is None  # a prefix match needs the dot
