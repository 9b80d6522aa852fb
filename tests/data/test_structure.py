"""The shape of fusionkit.data: imports go one way, and every module stays a readable size."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fusionkit

PACKAGE = Path(fusionkit.__file__).parent
MAX_LINES = 800


def _imports(path: Path) -> set[str]:
    """The fusionkit modules a file imports, at the top or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fusionkit"):
            if node.module in ("fusionkit", "fusionkit.data", "fusionkit.tasks"):
                out.update(f"{node.module}.{a.name}" for a in node.names)
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("fusionkit"))
    return out


def test_the_data_modules_import_one_way_without_cycles():
    """registry <-> validate (and any other cycle among fusionkit.data) is gone, whether the
    import is at the top of the module or hidden inside a function."""
    graph = {
        f"fusionkit.data.{p.stem}": {m for m in _imports(p) if m.startswith("fusionkit.data.")}
        for p in sorted((PACKAGE / "data").glob("*.py"))
    }
    assert "fusionkit.data.validate" not in graph["fusionkit.data.registry"]
    assert "fusionkit.data.registry" in graph["fusionkit.data.validate"]
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            assert state.get(n) != 1, f"import cycle: {' -> '.join([*path, m, n])}"
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_registry_and_problems_load_without_validate():
    code = (
        "import sys, fusionkit.data.registry, fusionkit.data.problems; "
        "assert 'fusionkit.data.validate' not in sys.modules, 'registry pulls in validate'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_data_modules_stay_under_800_lines():
    """shapes.py (1,193 lines) and captions.py (990) were split by job; none may grow back."""
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (PACKAGE / "data").glob("*.py")}
    assert {"shapes_scene.py", "shapes_text.py", "caption_formats.py"} <= set(sizes)
    assert {n: k for n, k in sizes.items() if k > MAX_LINES} == {}
