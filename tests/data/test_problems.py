"""fusionkit.data.problems: the one problem-reporting module (issue record, policy, reports, errors)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import fusionkit
from fusionkit.data import registry
from fusionkit.data.base import DatasetError
from fusionkit.data.problems import (
    ON_ERROR,
    InputReport,
    Issue,
    Problems,
    Report,
    TaskInputError,
    check_on_error,
    problem,
    write_issues,
)
from fusionkit.tasks.captioning import CaptionDataset

PACKAGE = Path(fusionkit.__file__).parent


def test_only_problems_defines_the_problem_reporting_names():
    """One system: no other module defines its own issue record, report, policy or error class."""
    owned = {"Issue", "Problems", "Report", "InputReport", "TaskInputError", "ON_ERROR", "check_on_error", "problem"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "data" / "problems.py":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = []
            if isinstance(node, ast.ClassDef | ast.FunctionDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            found += [f"{path.relative_to(PACKAGE)}: {n}" for n in names if n in owned]
    assert found == []


def test_on_error_policy_is_checked_in_one_place():
    assert ON_ERROR == ("raise", "skip")
    assert check_on_error("skip") == "skip"
    with pytest.raises(DatasetError, match=r"on_error='ignore'; expected one of \('raise', 'skip'\)") as e:
        check_on_error("ignore")
    assert isinstance(e.value, ValueError)  # the tasks and features.py callers raised ValueError before
    assert Problems("collect").on_error == "collect"  # data check lists everything as errors
    with pytest.raises(DatasetError, match="on_error='collect'"):
        registry.prepare("manifest", "/nonexistent/out", source_dir="/nonexistent", on_error="collect")
    for bad in ("ignore", "collect"):
        with pytest.raises(ValueError, match="on_error"):
            CaptionDataset.from_records([("a", "a cat", "train")], on_error=bad)


def test_problems_raise_skip_and_collect():
    with pytest.raises(DatasetError, match=r"^f:2 \(id 'x'\): gone$"):
        Problems("raise").error("missing_file", "f:2 (id 'x')", "gone")
    for policy, severity in (("skip", "skipped"), ("collect", "error")):
        p = Problems(policy)
        p.error("missing_file", "f:1", "gone", file=Path("img.png"))
        p.warn("duplicate", "f:3", "twice")
        p.dropped("f (train)", "2 answers outside the top K")
        assert [(i.kind, i.severity, i.file) for i in p.issues] == [
            ("missing_file", severity, "img.png"),
            ("duplicate", "warning", None),
            ("dropped", "warning", None),
        ]


def test_report_json_and_skipped_json_keep_their_format(tmp_path):
    rep = Report(
        "toy", "/src", "csv", counts={"train": 2}, issues=[Issue("corrupt", "m.csv:3", "bad", "skipped", "a.png")]
    )
    rep.write(tmp_path / "report.json")
    doc = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert doc["issues"] == [
        {"kind": "corrupt", "where": "m.csv:3", "message": "bad", "severity": "skipped", "file": "a.png"}
    ]
    assert (doc["ok"], doc["n_errors"], doc["n_skipped"], doc["n_warnings"]) == (True, 0, 1, 0)
    assert Report.load(tmp_path) == rep
    write_issues(tmp_path / "skipped.json", rep.skipped)
    assert json.loads((tmp_path / "skipped.json").read_text(encoding="utf-8")) == doc["issues"]
    rep.write(tmp_path / "report.txt")
    assert (tmp_path / "report.txt").read_text(encoding="utf-8") == rep.render() + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.txt", "skipped.json"]  # no temp files


def test_input_report_text_and_json_keep_their_format(tmp_path):
    rep = InputReport(source="caps.json")
    assert rep.to_text() == "input report for caps.json: no problems found\n" and bool(rep) and len(rep) == 0
    with pytest.raises(TaskInputError, match=r"^caps\.json: images\[3\]: empty caption$"):
        problem(rep, "raise", "caps.json", "images[3]", "empty caption")
    problem(rep, "skip", "caps.json", "images[3]", "empty caption")
    problem(rep, "skip", "caps.json", "images[4] caption 0", "too long", action="truncated")
    assert rep.counts == {"skipped": 1, "truncated": 1} and len(rep) == 2
    assert rep.to_text() == (
        "input report for caps.json: 1 skipped, 1 truncated\n"
        "- caps.json: images[3]: empty caption -> skipped\n"
        "- caps.json: images[4] caption 0: too long -> truncated\n"
    )
    rep.write(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "source": "caps.json",
        "counts": {"skipped": 1, "truncated": 1},
        "issues": [
            {"file": "caps.json", "record": "images[3]", "problem": "empty caption", "action": "skipped"},
            {"file": "caps.json", "record": "images[4] caption 0", "problem": "too long", "action": "truncated"},
        ],
    }
    rep.write(tmp_path / "r.txt")
    assert (tmp_path / "r.txt").read_text() == rep.to_text()
    assert (
        rep.issues[0].where == "caps.json: images[3]" and rep.issues[0].line() == "caps.json: images[3]: empty caption"
    )
    assert issubclass(TaskInputError, DatasetError)
