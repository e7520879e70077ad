"""The package layout keeps its dependencies pointing one way: no import cycles between ldmkit's packages."""

from __future__ import annotations

import ast
from pathlib import Path

import ldmkit

ROOT = Path(ldmkit.__file__).parent


def package_imports() -> dict[str, set[str]]:
    """Top-level package (or module) of ldmkit → the other ones it imports anywhere in its files."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        package = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "ldmkit" and len(parts) > 1 and parts[1] != package:
                    graph.setdefault(package, set()).add(parts[1])
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_packages():
    assert cycles(package_imports()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The names of the conditioning kinds: only conditioning/ decides what they mean.
CONDITIONING_KINDS = {"text", "pretrained_text", "class", "masked_image", "low_res", "semantic"}


def kind_comparisons(path: Path) -> list[int]:
    """Lines of ``path`` that compare something with a conditioning kind's name."""

    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*(names(e) for e in node.elts)) if node.elts else set()
        return set()

    return [node.lineno for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Compare)
            and any(names(operand) & CONDITIONING_KINDS for operand in [node.left, *node.comparators])]


def test_no_conditioning_kind_is_compared_outside_conditioning():
    found = {str(p.relative_to(ROOT)): lines for p in sorted(ROOT.rglob("*.py"))
             if p.relative_to(ROOT).parts[0] != "conditioning" and (lines := kind_comparisons(p))}
    assert found == {}


def test_the_kind_finder_finds_comparisons(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('a = kind == "text"\nb = kind in ("x", "low_res")\nc = kind == "kl"\nd = {"text": 1}\n')
    assert kind_comparisons(source) == [1, 2]
