"""The committed notebooks as files: each opens with the one install cell, and its jupytext script
is in sync with it (what CI checks of the pairing)."""

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import papermill
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from fusionkit import notebook_files as F
from fusionkit.pipeline import NOTEBOOKS

ROOT = Path(__file__).resolve().parents[2]
NB_DIR = ROOT / "notebooks"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_first_code_cell_is_the_install_cell_before_the_parameters(name):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == F.INSTALL_CELL, f"{name}: run `make notebooks`"
    assert "install" in code[0].metadata.get("tags", []) and "parameters" in code[1].metadata.get("tags", [])
    # papermill still finds the parameters and injects right after them, after the install cell
    assert papermill.inspect_notebook(str(NB_DIR / f"{name}.ipynb"))
    as_papermill_reads_it = load_notebook_node(str(NB_DIR / f"{name}.ipynb"))
    cells = parameterize_notebook(as_papermill_reads_it, {"seed": 1}).cells
    tags = [c.metadata.get("tags", []) for c in cells if c.cell_type == "code"]
    assert tags[:3] == [["install"], ["parameters"], ["injected-parameters"]]


def test_the_install_cell_pins_the_project_s_torch():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {d.split("==")[0]: d for d in deps if d.startswith(("torch==", "torchvision=="))}
    assert set(F.TORCH_PINS) == set(pins.values())
    for pin in pins.values():
        assert f'"{pin}"' in F.INSTALL_CELL


def _run_cell(source: str, monkeypatch, importable: bool, cwd: Path) -> tuple[dict, list]:
    import importlib.util

    calls = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: real(n, *a) if importable or n != "fusionkit" else None)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    monkeypatch.chdir(cwd)
    namespace: dict = {}
    exec(compile(source, "install-cell", "exec"), namespace)
    return namespace, calls


def test_the_install_cell_is_a_no_op_where_fusionkit_is_importable(monkeypatch, tmp_path):
    namespace, calls = _run_cell(F.INSTALL_CELL, monkeypatch, importable=True, cwd=tmp_path)
    assert calls == []
    assert "FUSIONKIT_SOURCE" not in namespace  # no new str global: wb.parameters_from would take it for a parameter
    assert not [k for k, v in namespace.items() if isinstance(v, (str, int, float, list, dict)) and not k.startswith("_")]


def test_the_install_cell_installs_from_the_variable_the_checkout_or_the_repository(monkeypatch, tmp_path):
    pinned = [sys.executable, "-m", "pip", "install", "-q", *F.TORCH_PINS]
    _, calls = _run_cell(F.INSTALL_CELL, monkeypatch, importable=False, cwd=tmp_path)  # Colab: no checkout around
    assert calls == [([*pinned, F.REPOSITORY], {"check": True})]
    checkout = tmp_path / "repo"
    (checkout / "notebooks").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    _, calls = _run_cell(F.INSTALL_CELL, monkeypatch, importable=False, cwd=checkout / "notebooks")
    assert calls == [([*pinned, ".."], {"check": True})]  # a fresh clone's notebooks/
    given = F.INSTALL_CELL.replace('FUSIONKIT_SOURCE = ""', 'FUSIONKIT_SOURCE = "/wheels/fusionkit.whl"', 1)
    assert given != F.INSTALL_CELL
    _, calls = _run_cell(given, monkeypatch, importable=False, cwd=checkout / "notebooks")
    assert calls == [([*pinned, "/wheels/fusionkit.whl"], {"check": True})]


def test_the_jupytext_scripts_are_in_sync():
    assert F.out_of_date(NB_DIR) == [], "run `make notebooks` (python -m fusionkit.notebook_files)"
    assert sorted(p.stem for p in NB_DIR.glob("*.py")) == sorted(NOTEBOOKS)
    assert (NB_DIR / "jupytext.toml").read_text().count('formats = "ipynb,py:percent"') == 1


def test_the_check_catches_an_edited_notebook_and_the_update_fixes_it(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(NB_DIR / "06_report.ipynb", folder)
    shutil.copy(NB_DIR / "06_report.py", folder)
    nb_path = folder / "06_report.ipynb"
    assert F.out_of_date(folder) == []
    nb = json.loads(nb_path.read_text())
    nb["cells"][-1]["source"] = ["print('edited')\n"]
    nb_path.write_text(json.dumps(nb, indent=1) + "\n")
    assert F.out_of_date(folder) == [f"{folder / '06_report.py'}: out of sync with 06_report.ipynb"]
    assert F.main([str(folder), "--check"]) == 1
    assert F.update(folder) == [folder / "06_report.py"]
    assert "print('edited')" in (folder / "06_report.py").read_text() and F.out_of_date(folder) == []
    # a notebook without the install cell gets it, before its parameters
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells = [c for c in nb.cells if "install" not in c.metadata.get("tags", [])]
    nbformat.write(nb, nb_path)
    assert "its first code cell is not the install cell" in F.out_of_date(folder)[0]
    assert F.main([str(folder)]) == 0 and F.out_of_date(folder) == []
    cells = nbformat.read(nb_path, as_version=4).cells
    assert cells[0].cell_type == "markdown" and cells[1].source == F.INSTALL_CELL
