"""The import graph of tensorgate.server has no cycle: ast over the source files, no import executed.

Two graphs. The module graph has every module-level import, those under
``if TYPE_CHECKING:`` included: a cycle of type-only imports is still a cycle
of knowledge (the one around model.py went through nine files and telemetry),
so none is allowed. The full graph adds the imports made inside functions,
the usual way to hide a cycle from the interpreter: none may pass through the
model loader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from support import REPO_ROOT

PACKAGE = "tensorgate.server"
SOURCE = REPO_ROOT / "server"
LOADER = f"{PACKAGE}.model"

Graph = dict[str, set[str]]


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package's __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join([PACKAGE, *parts])] = (path, is_package)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(body: Iterable[ast.stmt], functions: bool) -> Iterable[ast.Import | ast.ImportFrom]:
    """Module-level imports (TYPE_CHECKING blocks included); with ``functions``, those in any body too."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            yield from _imports(node.body, functions)
            yield from _imports(node.orelse, functions)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _imports(block, functions)
        elif functions and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.With):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    yield inner


def import_graph(root: Path, functions: bool = False) -> Graph:
    modules = _modules(root)
    graph: Graph = {}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8")).body, functions):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            targets.add(target)
            targets.update(f"{target}.{alias.name}" for alias in node.names)
        deps = set()
        for target in targets:
            parts = target.split(".")
            for end in range(3, len(parts) + 1):  # importing a.b.c runs a.b's __init__ first
                prefix = ".".join(parts[:end])
                if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                    deps.add(prefix)
        graph[name] = deps
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for vertex in sorted(graph):
        if vertex not in index:
            visit(vertex)
    return found


def _describe(found: list[list[str]], graph: Graph) -> str:
    lines = []
    for component in found:
        members = set(component)
        lines.append(" / ".join(c.removeprefix(PACKAGE + ".") for c in component))
        for module in component:
            inside = sorted(d.removeprefix(PACKAGE + ".") for d in graph[module] if d in members)
            lines.append(f"    {module.removeprefix(PACKAGE + '.')} -> {inside}")
    return "\n".join(lines)


def test_the_module_import_graph_has_no_cycle() -> None:
    graph = import_graph(SOURCE)
    assert LOADER in graph and len(graph) > 50
    found = cycles(graph)
    assert not found, "import cycles (TYPE_CHECKING imports count):\n" + _describe(found, graph)


def test_no_import_inside_a_function_closes_a_cycle_through_the_model_loader() -> None:
    graph = import_graph(SOURCE, functions=True)
    through = [c for c in cycles(graph) if LOADER in c]
    assert not through, "cycles through model.py:\n" + _describe(through, graph)


def test_the_graph_sees_type_only_and_deferred_cycles(tmp_path: Path) -> None:
    """The checks above can fail: a TYPE_CHECKING cycle and a function-level one are both found."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (tmp_path / "sub" / "leaf.py").write_text("x = 1\n")
    (tmp_path / "model.py").write_text("from .request import R\nfrom .sub import leaf\nfrom .late import f\n")
    (tmp_path / "request.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .model import M\n")
    (tmp_path / "late.py").write_text("def f():\n    from . import model\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [[f"{PACKAGE}.model", f"{PACKAGE}.request"]]
    assert graph[f"{PACKAGE}.model"] >= {f"{PACKAGE}.sub", f"{PACKAGE}.sub.leaf"}
    assert graph[f"{PACKAGE}.sub.leaf"] == set()  # a module does not depend on its own package
    assert f"{PACKAGE}.model" not in graph[f"{PACKAGE}.late"]
    deferred = import_graph(tmp_path, functions=True)
    assert cycles(deferred) == [[f"{PACKAGE}.late", f"{PACKAGE}.model", f"{PACKAGE}.request"]]
