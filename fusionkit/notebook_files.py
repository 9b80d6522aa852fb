"""The committed notebooks as files: the install cell each one opens with, and its jupytext script.

- :data:`INSTALL_CELL`: the first code cell of every notebook (tagged ``install``, right after the
  title, before the ``parameters`` cell). In Colab or another fresh environment it pip-installs
  fusionkit - from ``FUSIONKIT_SOURCE`` when set (a path, wheel or git URL), else from the
  checkout the notebook sits in, else from :data:`REPOSITORY` - with the pinned torch; where
  ``fusionkit`` is importable (``fusionkit run``, ``make lab``) it does nothing.
- jupytext pairing: ``notebooks/NN_name.py`` (``py:percent``) beside each ``.ipynb``, generated
  from it (the ``.ipynb`` stays what papermill runs; ``notebooks/jupytext.toml`` pairs them for
  JupyterLab's jupytext too), so that a notebook's diff reads as code.

``python -m fusionkit.notebook_files`` (``make notebooks``) puts :data:`INSTALL_CELL` in place and
rewrites the scripts; ``--check`` lists what is out of date and exits 1 (``tests/notebooks/``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: where a fresh environment installs fusionkit from when the notebook is not in a checkout
REPOSITORY = "git+https://github.com/fusionkit/fusionkit.git"
#: the pins of pyproject.toml the install cell installs first (tests/notebooks/test_notebook_files.py checks them)
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
INSTALL_TAG = "install"
SCRIPT_FORMAT = "py:percent"

INSTALL_CELL = f"""\
# Colab or a fresh environment: installs fusionkit (with the pinned torch) when it is not importable; else a no-op.
FUSIONKIT_SOURCE = ""  # a path, wheel or git URL to install from ("": this checkout, else the project's repository)
import importlib.util, pathlib, subprocess, sys
if importlib.util.find_spec("fusionkit") is None:
    _src = FUSIONKIT_SOURCE or (".." if pathlib.Path("../pyproject.toml").is_file() else "{REPOSITORY}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{TORCH_PINS[0]}", "{TORCH_PINS[1]}", _src], check=True)
del FUSIONKIT_SOURCE  # not a parameter of the notebook"""


def script_path(notebook: Path) -> Path:
    return notebook.with_suffix(".py")


def script_text(notebook: Path) -> str:
    """The ``py:percent`` script of a notebook, as ``jupytext --sync`` writes it."""
    import jupytext

    return jupytext.writes(jupytext.read(notebook), fmt=SCRIPT_FORMAT)


def install_cell_index(cells: list) -> int | None:
    """The index of the notebook's first code cell when it is the install cell (tagged ``install``)."""
    code = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"]
    if code and INSTALL_TAG in cells[code[0]].get("metadata", {}).get("tags", []):
        return code[0]
    return None


def set_install_cell(notebook: Path) -> bool:
    """Make the install cell the notebook's first code cell, with :data:`INSTALL_CELL`'s text
    (inserted right before the first code cell when absent); True when the file changed."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    i = install_cell_index(nb.cells)
    if i is not None and nb.cells[i].source == INSTALL_CELL:
        return False
    if i is None:
        first = next((k for k, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
        cell = nbformat.v4.new_code_cell(INSTALL_CELL, id=f"{notebook.stem[:2]}-install")
        cell.metadata["tags"] = [INSTALL_TAG]
        nb.cells.insert(first, cell)
    else:
        nb.cells[i].source = INSTALL_CELL
    notebook.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return True


def out_of_date(folder: Path) -> list[str]:
    """What ``python -m fusionkit.notebook_files`` would change, one line each."""
    import nbformat

    out = []
    for nb_path in sorted(folder.glob("*.ipynb")):
        cells = nbformat.read(nb_path, as_version=4).cells
        i = install_cell_index(cells)
        if i is None:
            out.append(f"{nb_path}: its first code cell is not the install cell (tagged {INSTALL_TAG!r})")
        elif cells[i].source != INSTALL_CELL:
            out.append(f"{nb_path}: its install cell differs from fusionkit.notebook_files.INSTALL_CELL")
        script = script_path(nb_path)
        if not script.is_file():
            out.append(f"{script}: missing (the jupytext script of {nb_path.name})")
        elif script.read_text(encoding="utf-8") != script_text(nb_path):
            out.append(f"{script}: out of sync with {nb_path.name}")
    return out


def update(folder: Path) -> list[Path]:
    """Put the install cell in place and rewrite every script; returns the files changed."""
    changed = []
    for nb_path in sorted(folder.glob("*.ipynb")):
        if set_install_cell(nb_path):
            changed.append(nb_path)
        script, text = script_path(nb_path), script_text(nb_path)
        if not script.is_file() or script.read_text(encoding="utf-8") != text:
            script.write_text(text, encoding="utf-8")
            changed.append(script)
    return changed


def main(argv: list[str] | None = None) -> int:
    from fusionkit.pipeline import notebooks_dir

    p = argparse.ArgumentParser(prog="python -m fusionkit.notebook_files", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", default=None, help="the notebooks folder (default: the repository's)")
    p.add_argument("--check", action="store_true", help="only list what is out of date (exit 1 when anything is)")
    args = p.parse_args(argv)
    folder = Path(args.folder) if args.folder else notebooks_dir()
    if args.check:
        problems = out_of_date(folder)
        for line in problems:
            print(line)
        if problems:
            print("run `make notebooks` (python -m fusionkit.notebook_files) to update them", file=sys.stderr)
        return 1 if problems else 0
    for path in update(folder):
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
