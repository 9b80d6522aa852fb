"""House rule: nothing is unpickled from files. The package holds no way to do it."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fusionkit"
FORBIDDEN = {
    "weights_only=False": re.compile(r"weights_only\s*=\s*False"),
    "import pickle": re.compile(
        r"^\s*(import\s+(c?pickle|dill|cloudpickle)\b|from\s+(c?pickle|dill|cloudpickle)\s+import)", re.M
    ),
    "pickle.load": re.compile(r"\bpickle\.loads?\b"),
}


def test_package_never_unpickles():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20  # the package was found
    found = [f"{f.relative_to(PACKAGE.parent)}: {what}" for f in files for what, rx in FORBIDDEN.items()
             if rx.search(f.read_text(encoding="utf-8"))]  # fmt: skip
    assert not found, found


def test_the_patterns_catch_what_they_should():
    assert FORBIDDEN["weights_only=False"].search("torch.load(p, weights_only = False)")
    assert FORBIDDEN["import pickle"].search("x = 1\n    import pickle\n")
    assert FORBIDDEN["import pickle"].search("from pickle import loads")
    assert FORBIDDEN["pickle.load"].search("obj = pickle.loads(data)")
    assert not FORBIDDEN["import pickle"].search("# we never import pickles here")
