"""The tree's rules, enforced: no import cycles in graphopt, core never imports the CLI, a short top level.

Imports are read from the source (ast), module-level and inside functions alike (a lazy import
is still a dependency), except those under ``if TYPE_CHECKING:`` (annotations only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "graphopt"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[tuple[str, ...]]:
    """Each import as the candidates it may name, most specific first."""
    found: set[tuple[str, ...]] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.Import):
                found.update((a.name,) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = module.split(".") if is_package else module.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (child.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                # "from graphopt.x import y" names module graphopt.x.y when y is one, else graphopt.x
                found.update((f"{base}.{a.name}", base) for a in child.names)
            visit(child)

    visit(tree)
    return found


def import_graph() -> nx.DiGraph:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for candidates in _imports(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            target = next((c for c in candidates if c in modules), candidates[-1])
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # A package's __init__ is run by importing any of its modules: not an edge worth counting
            # unless the package itself is what is imported.
            if target and target != name and target != "graphopt":
                graph.add_edge(name, target)
    return graph


def test_graphopt_has_no_import_cycles():
    graph = import_graph()
    cycles = [c for c in nx.simple_cycles(graph) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:10])


def test_core_never_imports_the_cli():
    graph = import_graph()
    offenders = sorted((a, b) for a, b in graph.edges
                       if b.startswith("graphopt.cli") and not a.startswith("graphopt.cli")
                       and a != "graphopt.builtin" and a != "graphopt.__main__")
    # graphopt.builtin registers the built-in commands by module *name* (importlib), as any plugin would.
    assert not offenders, offenders


def test_the_top_level_stays_short():
    top = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 10, top


def test_every_package_says_what_it_holds():
    for init in ROOT.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"
