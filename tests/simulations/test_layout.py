"""simulations/ in three rooms (issue 37): config/, run/, methods/; no import cycles
among its
modules, no import inside a function to dodge one, no import kept for its side
effect."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "simulations"
ROOMS = {"config", "run", "methods"}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(("bouquet", "simulations", *rel.parts)).removesuffix(
            ".__init__"
        )
        out[name] = ast.parse(path.read_text())
    return out


def _imported(node: ast.AST) -> list[str]:
    if (
        isinstance(node, ast.ImportFrom)
        and node.module
        and node.module.startswith("bouquet.simulations")
    ):
        return [f"{node.module}.{a.name}" for a in node.names] + [node.module]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("bouquet.simulations")]
    return []


def test_every_module_is_in_a_room():
    rooms = {p.parent.name for p in ROOT.rglob("*.py") if p.parent != ROOT}
    assert rooms == ROOMS
    assert [p.name for p in ROOT.glob("*.py")] == ["__init__.py"]


def test_no_import_cycles_and_no_imports_inside_functions():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        deps = {
            m
            for node in tree.body
            for m in _imported(node)
            if m in modules and m != name
        }
        graph[name] = deps
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [m for sub in ast.walk(node) for m in _imported(sub)]
                assert not inner, (
                    f"{name}.{node.name} imports {inner} inside the function"
                )
            # `import bouquet.simulations.x` only to run it
            if isinstance(node, ast.Import):
                assert not _imported(node), (
                    f"{name}: import {[a.name for a in node.names]} (for its side "
                    "effect?)"
                )
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError(
                    "import cycle: " + " -> ".join([*path[path.index(dep) :], dep])
                )
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
