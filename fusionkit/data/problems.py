"""Problems with input data, in one place: the issue record (:class:`Issue`), the ``on_error``
policy (:data:`ON_ERROR`, :func:`check_on_error`), the error raised for a bad record
(:class:`~fusionkit.data.base.DatasetError`; :class:`TaskInputError` from the task readers), the
collectors that raise or list bad records, and the written reports (text and JSON, written
atomically: temp file, then rename).

``on_error`` (what every reader of fusionkit does with a bad record):

* ``"raise"`` (the default): raise at the first problem, naming the file, the line or record and
  what was expected;
* ``"skip"``: drop the record, list it and go on;
* ``"collect"`` (only :class:`Problems`, what ``fusionkit data check`` uses): like skip, but every
  problem counts as an error, so the check exits non-zero.

Dataset loaders get a :class:`Problems` collector; what it lists lands in the :class:`Report`, in
``report.json`` and (the skipped records: kind, where, message, file) in ``skipped.json`` of the
processed folder. Problems that make a whole file unusable (a CSV without the expected columns,
JSON that does not parse, a folder without any known layout) always raise; ``check`` reports them
as one error. :class:`Report` holds: counts per split, extra counts (images, captions, questions,
speakers, ...), the class balance per target and split, and the issues by kind - ``missing_file``,
``duplicate``, ``empty_caption``, ``corrupt``, ``unsafe_path``, ``malformed``, ``unmatched``,
``dropped`` (e.g. answers outside the top K) - with :meth:`Report.render` printing all of it.

The task readers (captions and VQA questions for captioning / retrieval / VQA) record what they
skipped or truncated in an :class:`InputReport` through :func:`problem`; it writes itself as text
or JSON (``{"source", "counts", "issues": [{"file", "record", "problem", "action"}]}``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fusionkit.data.base import SPLITS, DatasetError, Sample, atomic_write_text

__all__ = [
    "KINDS",
    "ON_ERROR",
    "InputReport",
    "Issue",
    "Problems",
    "Report",
    "ReportProblems",
    "TaskInputError",
    "as_task_error",
    "check_on_error",
    "class_balance",
    "problem",
    "write_issues",
]

#: what a caller may pass as ``on_error``
ON_ERROR = ("raise", "skip")
#: what :class:`Problems` accepts besides: list every problem as an error (``fusionkit data check``)
COLLECT = "collect"


def check_on_error(on_error: str, allowed: tuple[str, ...] = ON_ERROR) -> str:
    """``on_error`` when it is one of ``allowed``; DatasetError (a ValueError) otherwise."""
    if on_error not in allowed:
        raise DatasetError(f"on_error={on_error!r}; expected one of {allowed}")
    return on_error


class TaskInputError(DatasetError):
    """Bad task input (a caption, a question, an id): the message names the file and the record."""


# kinds the report names in its summary lines (others are listed under "other")
KINDS = {
    "missing_file": "missing files",
    "duplicate": "duplicate ids",
    "empty_caption": "empty captions / texts",
    "corrupt": "corrupt or unreadable files",
    "unsafe_path": "paths escaping the root",
    "malformed": "malformed records",
    "unmatched": "unmatched annotations",
    "dropped": "dropped by an option",
    "note": "notes on how the data was read",
}


@dataclass
class Issue:
    """One problem: ``where`` names the file and the line or record, ``message`` what is wrong and
    what was expected."""

    kind: str  # one of KINDS
    where: str  # file:line (id ...) or file: record
    message: str  # what is wrong and what was expected
    severity: str = "error"  # error | skipped | warning; a task reader's action: skipped | truncated
    file: str | None = None  # the file concerned (a media file for loaders, the input file for task readers)
    record: str | None = None  # task readers: the record inside ``file``

    def line(self) -> str:
        return f"{self.where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        """As written to report.json / skipped.json (``record`` only when there is one)."""
        d = asdict(self)
        if d["record"] is None:
            del d["record"]
        return d


def write_issues(path: str | os.PathLike, issues: list[Issue]) -> Path:
    """A JSON list of issues (``skipped.json``), written atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps([i.as_dict() for i in issues], indent=1, ensure_ascii=False) + "\n")
    return path


class Problems:
    """Collects (or raises) the problems a loader finds; see the module docstring."""

    def __init__(self, on_error: str = "raise"):
        self.on_error = check_on_error(on_error, (*ON_ERROR, COLLECT))
        self.issues: list[Issue] = []

    def error(self, kind: str, where: str, message: str, file: str | os.PathLike | None = None) -> None:
        """A bad record: raise (on_error="raise") or list it and let the caller skip it."""
        if self.on_error == "raise":
            raise DatasetError(f"{where}: {message}")
        sev = "skipped" if self.on_error == "skip" else "error"
        self.issues.append(Issue(kind, where, message, sev, None if file is None else str(file)))

    def warn(self, kind: str, where: str, message: str, file: str | os.PathLike | None = None) -> None:
        """Something the user should know that does not stop the load (e.g. a duplicate caption)."""
        self.issues.append(Issue(kind, where, message, "warning", None if file is None else str(file)))

    def dropped(self, where: str, message: str) -> None:
        """A record left out on purpose by an option (e.g. an answer outside the top K)."""
        self.issues.append(Issue("dropped", where, message, "warning"))


def class_balance(targets: dict[str, list[str]], samples: list[Sample]) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for t, classes in targets.items():
        counts = Counter((s.split, s.targets.get(t)) for s in samples)
        out[t] = {
            sp: {classes[c]: counts.get((sp, c), 0) for c in range(len(classes))}
            for sp in SPLITS
            if any(s.split == sp for s in samples)
        }
    return out


@dataclass
class Report:
    name: str
    source: str
    format: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # samples per split
    stats: dict[str, Any] = field(default_factory=dict)  # images, captions, speakers, ...
    class_balance: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    # ------------------------------------------------------------------ views
    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def skipped(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "skipped"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def of_kind(self, kind: str) -> list[Issue]:
        return [i for i in self.issues if i.kind == kind]

    @property
    def missing_files(self) -> list[Issue]:
        return self.of_kind("missing_file")

    @property
    def duplicates(self) -> list[Issue]:
        return self.of_kind("duplicate")

    @property
    def empty_captions(self) -> list[Issue]:
        return self.of_kind("empty_caption")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["issues"] = [i.as_dict() for i in self.issues]
        d["ok"] = self.ok
        d["n_errors"], d["n_skipped"], d["n_warnings"] = len(self.errors), len(self.skipped), len(self.warnings)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(
            name=d["name"],
            source=d["source"],
            format=d.get("format", ""),
            counts=d.get("counts", {}),
            stats=d.get("stats", {}),
            class_balance=d.get("class_balance", {}),
            issues=[Issue(**i) for i in d.get("issues", [])],
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Report:
        """The report.json of a processed folder (or the file itself)."""
        p = Path(path)
        p = p / "report.json" if p.is_dir() else p
        return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report atomically: JSON (``report.json``) when ``path`` ends in ``.json``,
        else the text :meth:`render` prints."""
        path = Path(path)
        if path.suffix == ".json":
            text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"
        else:
            text = self.render() + "\n"
        atomic_write_text(path, text)
        return path

    def render(self, max_items: int = 10) -> str:
        """The human-readable report ``fusionkit data check`` prints."""
        lines = [f"{self.name} ({self.format}) at {self.source}" if self.format else f"{self.name} at {self.source}"]
        total = sum(self.counts.values())
        per = " · ".join(f"{sp} {self.counts.get(sp, 0)}" for sp in SPLITS if sp in self.counts)
        lines.append(f"  samples: {total}" + (f" ({per})" if per else ""))
        for k, v in self.stats.items():
            if isinstance(v, dict):
                v = ", ".join(f"{a}: {b}" for a, b in v.items())
            elif isinstance(v, list):
                v = ", ".join(map(str, v[:20])) + (" ..." if len(v) > 20 else "")
            lines.append(f"  {k.replace('_', ' ')}: {v}")
        for t, per_split in self.class_balance.items():
            lines.append(f"  class balance ({t}):")
            for sp, counts in per_split.items():
                n = sum(counts.values()) or 1
                shown = list(counts.items())
                body = ", ".join(f"{c} {k} ({100 * k / n:.0f}%)" for c, k in shown[:12])
                if len(shown) > 12:
                    body += f", ... {len(shown) - 12} more classes"
                lines.append(f"    {sp:5s} {body}")
        for kind, label in KINDS.items():
            items = self.of_kind(kind)
            lines.append(f"  {label}: {len(items)}")
            for i in items[:max_items]:
                lines.append(f"    [{i.severity}] {i.line()}")
            if len(items) > max_items:
                lines.append(f"    ... {len(items) - max_items} more (see report.json / skipped.json)")
        other = [i for i in self.issues if i.kind not in KINDS]
        for i in other[:max_items]:
            lines.append(f"  [{i.severity}] {i.line()}")
        status = "OK" if self.ok else f"{len(self.errors)} ERROR(S)"
        lines.append(
            f"  status: {status} ({len(self.errors)} errors, {len(self.skipped)} skipped, {len(self.warnings)} warnings)"
        )
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ task readers
@dataclass
class InputReport:
    """What a task reader found wrong with its input and what it did about it.

    With ``on_error="raise"`` the first problem raises :class:`TaskInputError`; with
    ``on_error="skip"`` every problem is recorded here (and the record skipped), and
    :meth:`write` leaves the written report next to the results."""

    source: str = ""
    issues: list[Issue] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # per action

    def add(self, file: str, record: str, problem: str, action: str, kind: str = "malformed") -> None:
        file, record = str(file), str(record)
        self.issues.append(Issue(kind, f"{file}: {record}", problem, action, file, record))
        self.counts[action] = self.counts.get(action, 0) + 1

    def __len__(self) -> int:
        return len(self.issues)

    def __bool__(self) -> bool:  # an empty report is still a report (``if ds.report`` is confusing)
        return True

    def to_text(self) -> str:
        head = f"input report for {self.source or 'input'}: "
        if not self.issues:
            return head + "no problems found\n"
        lines = [head + ", ".join(f"{n} {a}" for a, n in sorted(self.counts.items()))]
        lines += [f"- {i.file}: {i.record}: {i.message} -> {i.severity}" for i in self.issues]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        issues = [{"file": i.file, "record": i.record, "problem": i.message, "action": i.severity} for i in self.issues]
        return {"source": self.source, "counts": dict(self.counts), "issues": issues}

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report atomically: JSON when ``path`` ends in ``.json``, plain text otherwise."""
        path = Path(path)
        text = json.dumps(self.as_dict(), indent=2) + "\n" if path.suffix == ".json" else self.to_text()
        atomic_write_text(path, text)
        return path


def problem(report: InputReport, on_error: str, file: str, record: str, what: str, action: str = "skipped") -> None:
    """A bad record of a task reader: raise :class:`TaskInputError` naming ``file`` and ``record``
    (``on_error="raise"``), or record it in ``report`` and go on (``"skip"``)."""
    if on_error == "raise":
        raise TaskInputError(f"{file}: {record}: {what}")
    report.add(file, record, what, action)


class ReportProblems(Problems):
    """A :class:`Problems` collector for the task readers: what a data-side parser reports as bad
    goes through :func:`problem` into ``report``, as a record of ``file`` (``where`` without its
    leading ``"file: "``): :class:`TaskInputError` under ``on_error="raise"``, skipped under
    ``"skip"``. Warnings and records dropped by an option are not the task readers' concern and
    are left out of ``report``."""

    def __init__(self, report: InputReport, on_error: str, file: str | os.PathLike):
        super().__init__(check_on_error(on_error))
        self.report, self.file = report, str(file)

    def _record(self, where: str) -> str:
        return where[len(self.file) + 2 :] if where.startswith(f"{self.file}: ") else where

    def error(self, kind: str, where: str, message: str, file: str | os.PathLike | None = None) -> None:
        problem(self.report, self.on_error, self.file, self._record(where), message)
        self.report.issues[-1].kind = kind

    def warn(self, kind: str, where: str, message: str, file: str | os.PathLike | None = None) -> None:
        pass

    def dropped(self, where: str, message: str) -> None:
        pass


@contextlib.contextmanager
def as_task_error() -> Iterator[None]:
    """Inside the block, a file-level DatasetError of a data-side parser (file not found, not
    JSON, not the expected layout) is raised as :class:`TaskInputError` with the same message."""
    try:
        yield
    except TaskInputError:
        raise
    except DatasetError as e:
        raise TaskInputError(str(e)) from e
