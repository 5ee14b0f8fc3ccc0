"""The package's rooms and the one rule that keeps them readable: imports point down, never up or sideways,
and no module imports another that (directly or not) imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "greenstudy"

# Lower number = lower room. A module may import its own room and lower rooms only.
RANKS = {"top": 0, "measure": 1, "training": 2, "variants": 3, "runs": 4, "study": 5, "report": 5, "results": 6, "entry": 7}
ENTRY_MODULES = {"greenstudy.demo", "greenstudy.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    if module in ENTRY_MODULES:
        return "entry"
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS):
        return parts[1]
    return "top"


def imports_of(path: Path, known: set[str]) -> set[str]:
    """greenstudy modules imported anywhere in the file (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("greenstudy"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("greenstudy"))
    return found & known


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, known) - {name} for name, path in files.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        room = room_of(module)
        for target in targets:
            other = room_of(target)
            if other != room and RANKS[other] >= RANKS[room]:
                bad.append(f"{module} ({room}) imports {target} ({other})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, found by depth-first search (each reported once from its first module)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_subpackage_says_what_it_is_for_and_what_it_may_import() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"{init} opening comment must say what the room may import"
        assert room_of(module_name(init)) in RANKS, f"{init.parent.name} is not a known room: add it to RANKS"


def test_imports_point_down_and_no_module_imports_one_that_imports_it() -> None:
    graph = import_graph()
    assert len(graph) > 30  # the walk found the package
    assert upward_imports(graph) == []
    assert cycles(graph) == []


def test_the_rule_catches_an_upward_import_and_a_circle() -> None:
    """The checks above can fail: an upward import and a two-module circle are both reported."""
    graph = {"greenstudy.measure.energy": {"greenstudy.runs.main_run"}, "greenstudy.runs.main_run": {"greenstudy.runs.resume"},
             "greenstudy.runs.resume": {"greenstudy.runs.main_run"}}
    assert upward_imports(graph) == ["greenstudy.measure.energy (measure) imports greenstudy.runs.main_run (runs)"]
    assert cycles(graph) == [["greenstudy.runs.main_run", "greenstudy.runs.resume", "greenstudy.runs.main_run"]]


def test_no_module_over_350_lines() -> None:
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert long == {}
