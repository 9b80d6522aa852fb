"""The numbers of a smoke-chain run that must not move when code is restructured.

``numbers(run_dir)`` collects every table the chain logged (``tables/*.csv``), the tasks'
``summary.json`` / ``test_metrics.json`` and the run's ``summary.csv``, without what differs
between two runs of the same code: timings, throughputs and absolute paths. The result is what
``smoke_numbers.json`` pins; ``python tests/notebooks/pinned.py RUN_DIR`` prints it (to update
the pin after a change that is *meant* to move numbers, with the reason in the commit message).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

PIN = Path(__file__).with_name("smoke_numbers.json")
#: columns and keys that measure time or speed, not behaviour
TIMING = re.compile(r"(time|_s$|per_s|throughput|samples_per|duration|elapsed)", re.IGNORECASE)
#: columns that hold paths of the run's own files (they differ between run folders)
PATH_COLUMNS = {"image", "path", "file"}


def _value(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if hasattr(v, "item"):
        return _value(v.item())
    return v


def _table(path: Path) -> dict[str, list[Any]]:
    df = pd.read_csv(path)
    out = {}
    for col in df.columns:
        if TIMING.search(col) or col in PATH_COLUMNS:
            continue
        out[col] = [_value(v) for v in df[col].tolist()]
    return out


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if TIMING.search(str(k)):
                continue
            out.update(_flat(v, f"{prefix}{k}/"))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}{i}/"))
        return out
    return {prefix.rstrip("/"): _value(obj)}


def numbers(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    out: dict[str, Any] = {"tables": {}, "tasks": {}, "summary": {}}
    for p in sorted((run_dir / "tables").glob("*.csv")):
        out["tables"][p.stem] = _table(p)
    for task in ("captioning", "vqa", "retrieval"):
        for name in ("summary.json", "test_metrics.json"):
            p = run_dir / task / name
            if p.is_file():
                out["tasks"][f"{task}/{name}"] = _flat(json.loads(p.read_text(encoding="utf-8")))
    summary = pd.read_csv(run_dir / "summary.csv")
    for r in summary.itertuples():
        if not TIMING.search(str(r.metric)):
            out["summary"][f"{r.step}/{r.metric}"] = _value(r.value)
    return out


def differences(got: Any, want: Any, where: str = "", tol: float = 1e-6) -> list[str]:
    """Every place where ``got`` differs from ``want`` (floats within ``tol``, relative or absolute)."""
    if isinstance(want, dict) and isinstance(got, dict):
        diffs = [f"{where}/{k}: missing" for k in want if k not in got]
        diffs += [f"{where}/{k}: not pinned (new)" for k in got if k not in want]
        for k in want:
            if k in got:
                diffs += differences(got[k], want[k], f"{where}/{k}", tol)
        return diffs
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} rows, pinned {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{where}[{i}]", tol)]
    num = (int, float)
    if isinstance(want, num) and isinstance(got, num) and not isinstance(want, bool) and not isinstance(got, bool):
        if math.isclose(float(got), float(want), rel_tol=tol, abs_tol=tol):
            return []
        return [f"{where}: {got!r}, pinned {want!r}"]
    if str(got) != str(want):  # summary.csv mixes numbers and strings in one column
        try:
            if math.isclose(float(got), float(want), rel_tol=tol, abs_tol=tol):
                return []
        except (TypeError, ValueError):
            pass
        return [f"{where}: {got!r}, pinned {want!r}"]
    return []


if __name__ == "__main__":
    print(json.dumps(numbers(sys.argv[1]), indent=1, sort_keys=True))
