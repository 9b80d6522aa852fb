"""No import cycles between fusionkit's modules, counting imports inside functions too: a lazy
import must never be what hides a cycle (unpickling is checked in tests/training/test_no_pickle.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PKG = Path(__file__).resolve().parents[1] / "fusionkit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The fusionkit module an import of ``name`` executes last (``a.b.c`` -> itself, else its parent)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> nx.DiGraph:
    modules = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                if t == "fusionkit" or t.startswith("fusionkit."):
                    dst = _resolve(t, modules)
                    if dst and dst != mod and not (mod.startswith(dst + ".") and dst != "fusionkit"):
                        g.add_edge(mod, dst)
    return g


def test_the_graph_sees_imports_inside_functions():
    g = import_graph()
    assert g.has_edge("fusionkit.cli", "fusionkit.pipeline")  # cli imports it inside a function
    assert len(g) > 40


def test_no_import_cycles():
    cycles = sorted(sorted(c) for c in nx.simple_cycles(import_graph()))
    assert not cycles, "import cycles (counting imports inside functions):\n" + "\n".join(
        " <-> ".join(c) for c in cycles[:20]
    )


MAX_LINES = 800


def test_every_module_stays_a_readable_size():
    """A module that grows a second job becomes two (experiments.py was 2,100 lines, captioning.py
    1,500, shapes.py 1,200 before the split)."""
    sizes = {str(p.relative_to(PKG.parent)): len(p.read_text(encoding="utf-8").splitlines()) for p in PKG.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
