"""ichseg's packages import each other along one direction: no package reaches, through any
chain of imports, back to itself."""

from __future__ import annotations

import ast
from pathlib import Path

import ichseg

PACKAGE = Path(ichseg.__file__).parent


def _unit(module: str) -> str:
    """The package (`ichseg.data`) or top-level module (`ichseg.paths`) a module belongs to."""
    return ".".join(module.split(".")[:2])


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Unit -> the other units its modules import (at any depth of the file, lazily or not)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        unit = _unit(name)
        edges = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                # `from . import x` in a module is relative to its package; in an __init__,
                # to the package itself.
                base = name.split(".")
                drop = node.level - (path.name == "__init__.py")
                base = base[: len(base) - drop]
                targets = [".".join([*base, node.module] if node.module else base)]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("ichseg.") and _unit(target) != unit:
                    edges.add(_unit(target))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*trail, nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_packages_do_not_import_each_other_in_circles():
    graph = import_graph()
    assert {
        "ichseg.training",
        "ichseg.report",
        "ichseg.models",
        "ichseg.scans",
        "ichseg.jobs",
    } <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
