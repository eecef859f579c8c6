"""The package layering: kit/ imports no module that imports it back, and nothing in kit/ points up
into clients/ or jobs/. Every import counts, also the ones inside functions (a deferred import still
ties two modules together)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = ("kit", "clients", "jobs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The kit-internal modules a file imports (`from kit import x` counts as kit.x when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in known}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for layer in LAYERS for p in (REPO / layer).rglob("*.py")}
    known = set(files)
    return {name: _imports(path, known) - {name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _is_package_parent(a: str, b: str) -> bool:
    """A package's __init__ re-exporting its own submodules is not a layering cycle."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def test_no_import_cycles_between_modules() -> None:
    graph = import_graph()
    graph = {a: {b for b in deps if not _is_package_parent(a, b)} for a, deps in graph.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_kit_never_imports_clients_or_jobs() -> None:
    up = {a: sorted(b for b in deps if b.split(".")[0] in {"clients", "jobs"}) for a, deps in import_graph().items() if a.startswith("kit")}
    assert {a: b for a, b in up.items() if b} == {}


def test_the_finder_sees_function_level_imports() -> None:
    """The graph must see deferred imports, else a cycle hidden in a function body passes."""
    graph = import_graph()
    assert "kit.render" in graph["kit.ansible_vars"]
    assert "kit.outputs" in graph["kit.cli"]  # kit/cli.py imports it inside cmd_render
