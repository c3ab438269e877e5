"""The import graph of ``paper_code``: no circle, and no import from a lower layer to a higher one.

The layers (the package docstring of :mod:`paper_code`): bottom modules without package imports
(names, runtime, the ImageNet class names, paths, the repository setting), then ``models`` and
``data`` (which never import each other), ``methods``, ``metrics``, the experiments wing, the book
wing, and ``cli`` / ``finetune`` on top. Every
``import`` statement counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "paper_code"

#: Layer of each top-level module or subpackage of ``paper_code``; a module may import its own
#: layer and the layers below. A new top-level module needs an entry here.
LAYERS = {
    "names": 0,
    "runtime": 0,
    "imagenet": 0,
    "layout": 0,
    "repository": 0,
    "models": 1,
    "data": 1,
    "methods": 2,
    "metrics": 3,
    "viz": 3,
    "experiments": 4,
    "book": 5,
    "cli": 6,
    "finetune": 6,
    "__main__": 6,
    "examples": 6,
}

#: Same layer, but never importing each other.
APART = {frozenset({"models", "data"})}

#: Known circles, each as the sorted tuple of its modules: none.
KNOWN_CIRCLES: set[tuple[str, ...]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """The ``paper_code`` modules that ``name`` imports, with the line of each import."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "paper_code":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "paper_code":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                yield (sub if sub in MODULES else source), node.lineno


def graph() -> dict[str, dict[str, int]]:
    edges: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        for target, line in imported(name, path):
            while target not in MODULES:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target != name:
                edges.setdefault(name, {}).setdefault(target, line)
    return edges


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def circles(edges: dict[str, dict[str, int]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    missing = sorted({top(n) for n in MODULES if top(n) and top(n) not in LAYERS})
    assert not missing, f"give these top-level modules a layer in LAYERS: {missing}"


def test_no_import_circle():
    found = [c for c in circles(graph()) if c not in KNOWN_CIRCLES]
    assert not found, f"import circles: {found}"


def test_no_import_goes_up_a_layer():
    bad = []
    for source, targets in graph().items():
        a = top(source)
        for target, line in targets.items():
            b = top(target)
            if not a or not b or a == b:
                continue  # the package root is on top (it exposes every layer lazily)
            if LAYERS[b] > LAYERS[a] or frozenset({a, b}) in APART:
                bad.append(f"{source} (line {line}) imports {target}")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


# ----------------------------------------------------------------------- the checks can fail


def test_circle_finder_finds_a_circle():
    edges = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    global MODULES
    saved = MODULES
    try:
        MODULES = dict.fromkeys("abcd", Path())
        assert circles(edges) == [("a", "b", "c")]
    finally:
        MODULES = saved


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        ("paper_code.data.datasets", "from . import medical", "paper_code.data.medical"),
        ("paper_code.data.datasets", "from ..imagenet import x", "paper_code.imagenet"),
        ("paper_code.metrics", "from .base import x", "paper_code.metrics.base"),
        ("paper_code.models.cnn", "import paper_code.models.vit", "paper_code.models.vit"),
    ],
)
def test_relative_imports_resolve(tmp_path, name, source, expected):
    path = tmp_path / ("__init__.py" if name == "paper_code.metrics" else "module.py")
    path.write_text(f"def f():\n    {source}\n", encoding="utf-8")
    assert [t for t, _ in imported(name, path)] == [expected]
