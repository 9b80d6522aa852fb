"""Committed notebooks: outputs stripped, exactly one parameters cell whose every assignment is
typed, commented, and understood by papermill."""

import json
import re
from pathlib import Path

import papermill
import pytest

from fusionkit.pipeline import NOTEBOOKS

NB_DIR = Path(__file__).resolve().parents[2] / "notebooks"
ASSIGN = re.compile(r"^([A-Za-z_]\w*)\s*:\s*[\w\[\], |]+=\s*.+#\s*\S")


def test_every_pipeline_notebook_exists():
    assert sorted(p.stem for p in NB_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_clean_and_parameterised(name):
    path = NB_DIR / f"{name}.ipynb"
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for i, c in enumerate(code):
        assert not c.get("outputs"), f"{path}: code cell {i} was committed with outputs"
        assert c.get("execution_count") is None, f"{path}: code cell {i} has an execution count"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
    lines = [ln for ln in "".join(tagged[0]["source"]).splitlines() if ln.strip()]
    for ln in lines:
        assert ASSIGN.match(ln), f"{path}: parameter line is not a typed, commented assignment: {ln!r}"
    declared = papermill.inspect_notebook(str(path))
    assert len(declared) == len(lines), f"{path}: papermill parsed {sorted(declared)} of {len(lines)} lines"
    assert all(p["help"] for p in declared.values()), f"{path}: a parameter without a comment"
