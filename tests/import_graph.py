"""Import circles and private cross-module imports in a source tree (used by test_imports.py).

Every ``import`` and ``from ... import`` counts, those inside functions too. A package's
``__init__`` re-exports do not close a circle; ``from a import _name`` across modules is private.
"""

from __future__ import annotations

import ast
from pathlib import Path


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``root`` (a ``src`` folder)."""
    found = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def edges_and_private(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    edges: dict[str, set[str]] = {}
    private = []
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                    if target in mods and target != name:
                        edges.setdefault(name, set()).add(target)
                    if (
                        alias.name.startswith("_")
                        and not alias.name.startswith("__")
                        and target == base != name
                        and base in mods
                    ):
                        private.append(f"{name} imports {base}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods and alias.name != name:
                        edges.setdefault(name, set()).add(alias.name)
    return edges, private


def circles(mods: dict[str, Path], edges: dict[str, set[str]]) -> list[list[str]]:
    """Each circle met by a depth-first walk of the graph without package __init__ modules."""
    init = {n for n, p in mods.items() if p.name == "__init__.py"}
    graph = {a: {b for b in bs if b not in init} for a, bs in edges.items() if a not in init}
    found, state = [], {}

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                found.append(stack[stack.index(v) :] + [v])
            elif not state.get(v):
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for u in sorted(graph):
        if not state.get(u):
            visit(u, [])
    return found


def problems(root: Path) -> list[str]:
    """One line per circle and per private cross-module import under ``root``."""
    mods = modules(root)
    edges, private = edges_and_private(mods)
    return [" -> ".join(c) for c in circles(mods, edges)] + private
