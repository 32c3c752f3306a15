"""The package's import graph has no cycle, counting every import: at module level, inside functions and methods,
under ``if TYPE_CHECKING``, relative or absolute. A cycle through a function-level import works until someone moves
the import up; here it is a test failure naming the cycle.

Edges: ``import ctsr.a.b`` and ``from ctsr.a.b import x`` make the importing module depend on ``ctsr.a.b`` (or on
``ctsr.a.b.x`` when that is a module) and on the packages above it (``ctsr.a``: its ``__init__`` runs first), except
the importing module's own packages, which are already being imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ctsr"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name ``module`` imports (``a.b`` for ``import a.b``; ``a.b`` and ``a.b.x`` for
    ``from a.b import x``), anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        deps = set()
        for name in _imported_names(module, path):
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:  # ctsr.a.b.function → ctsr.a.b
                parts.pop()
            deps.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # the packages above run too
        graph[module] = {d for d in deps if d != module and not module.startswith(d + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, …, a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_import_graph_is_acyclic():
    graph = import_graph()
    assert len(graph) > 60
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_graph_sees_function_level_relative_and_package_imports(tmp_path):
    """The parser itself: an import inside a function, a relative import and the package above are all edges."""
    assert "ctsr.models.control" in import_graph()["ctsr.models.hub"]  # hub imports it at module level
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from .b import c\n    import ctsr.x.y\n")
    names = _imported_names("ctsr.a.m", src)
    assert {"ctsr.a.b", "ctsr.a.b.c", "ctsr.x.y"} <= names
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_metrics_and_losses_do_not_import_each_other():
    """What both need (the LPIPS network) lives in a neutral room, ``ctsr.nets``."""
    graph = import_graph()
    for a, b in (("ctsr.metrics", "ctsr.losses"), ("ctsr.losses", "ctsr.metrics")):
        crossing = sorted((m, d) for m, deps in graph.items() if m.startswith(a) for d in deps if d.startswith(b))
        assert not crossing, crossing


def test_the_command_line_depends_on_the_library_never_the_reverse():
    """``ctsr.cli`` names its tools' modules as strings (imported on use): with those edges the graph is still
    acyclic, and no library module imports ``ctsr.cli`` (the command line sits on top; only the experiment drivers,
    ``ctsr.experiments``, which run commands as a user would, sit above it)."""
    from ctsr.cli import TOOLS

    graph = import_graph()
    assert {module for module, _ in TOOLS.values()} <= set(graph)
    graph["ctsr.cli"] |= {module for module, _ in TOOLS.values()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)
    upward = sorted((m, d) for m, deps in graph.items() if not m.startswith(("ctsr.cli", "ctsr.experiments"))
                    for d in deps
                    if d.startswith("ctsr.cli"))
    assert not upward, upward
    # the parsers' modules reach neither torch nor the heavy library modules at import (`--help` stays fast)
    for module in ("ctsr.cli", "ctsr.cli.options", *(m for m, _ in TOOLS.values())):
        heavy = sorted(d for d in graph[module] if d.startswith(("ctsr.inference", "ctsr.models", "ctsr.lit",
                                                                  "ctsr.evaluation", "ctsr.metrics")))
        source = _modules()[module].read_text()
        top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
        assert not [line for line in top_level if any(h in line for h in heavy) or "torch" in line], module
