"""The package's rule of dependency (docs/architecture.md): imports go one way, so no module is
part of an import cycle, none imports inside a function to dodge one, and the library never
imports the CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGES = ("pipedbn", "stages")


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name)."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for each import of a package module, except
    those only for type checkers."""
    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name in known:
                        yield alias.name, child.lineno, in_function
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    name = sub if sub in known else child.module
                    if name in known:
                        yield name, child.lineno, in_function
            yield from walk(child, inner)
    yield from walk(ast.parse(path.read_text()), False)


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {n for n, _, _ in imports(p, known) if n != m} for m, p in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


LAZY = {("pipedbn/__init__.py", "pipedbn.estimator")}
"""The one import made inside a function on purpose, not to dodge a cycle: the package's PEP 562
``__getattr__`` loads the estimator (and with it scikit-learn, 1.5 s) when ``pipedbn.DBN`` is
first asked for, so the CLI, the launcher and every worker start without it."""


def test_no_package_import_inside_a_function() -> None:
    known = modules()
    inside = sorted({f"{p.relative_to(ROOT)}:{line} imports {name}"
                     for p in known.values() for name, line, in_function in imports(p, known)
                     if in_function and (str(p.relative_to(ROOT)), name) not in LAZY})
    assert inside == [], "\n".join(inside)


def test_the_library_never_imports_the_cli() -> None:
    edges = graph()
    library = [m for m in edges if not (m == "pipedbn.cli" or m.startswith("pipedbn.cli.")
                                        or m == "pipedbn.__main__")]
    assert [m for m in library if any(n.startswith("pipedbn.cli") for n in edges[m])] == []


@pytest.mark.slow
def test_the_command_line_starts_without_scikit_learn() -> None:
    code = "import sys, pipedbn, pipedbn.cli; assert 'sklearn' not in sys.modules; pipedbn.DBN"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
