"""Helpers the task modules share (not part of the public interface): the bad-input policy and its
written report. (Training - schedule, early stopping, checkpoints - is :mod:`fusionkit.training`.)"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fusionkit.data.base import DatasetError, atomic_write_text

ON_ERROR = ("raise", "skip")


class TaskInputError(DatasetError):
    """Bad task input (a caption, a question, an id): the message names the file and the record."""


@dataclass
class Issue:
    file: str
    record: str
    problem: str
    action: str  # "skipped", "truncated", ...


@dataclass
class InputReport:
    """What a reader found wrong with its input and what it did about it.

    With ``on_error="raise"`` the first problem raises :class:`TaskInputError`; with
    ``on_error="skip"`` every problem is recorded here (and the record skipped), and
    :meth:`write` leaves the written report next to the results."""

    source: str = ""
    issues: list[Issue] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, file: str, record: str, problem: str, action: str) -> None:
        self.issues.append(Issue(str(file), str(record), problem, action))
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
        lines += [f"- {i.file}: {i.record}: {i.problem} -> {i.action}" for i in self.issues]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "counts": dict(self.counts), "issues": [asdict(i) for i in self.issues]}

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report: JSON when ``path`` ends in ``.json``, plain text otherwise."""
        path = Path(path)
        text = json.dumps(self.as_dict(), indent=2) + "\n" if path.suffix == ".json" else self.to_text()
        atomic_write_text(path, text)
        return path


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}; expected one of {ON_ERROR}")


def problem(report: InputReport, on_error: str, file: str, record: str, what: str, action: str = "skipped") -> None:
    """Raise (``on_error="raise"``) or record and go on (``"skip"``)."""
    if on_error == "raise":
        raise TaskInputError(f"{file}: {record}: {what}")
    report.add(file, record, what, action)
