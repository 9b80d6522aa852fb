"""Helpers the task modules share (not part of the public interface): the bad-input policy and its
written report, the warm-up + cosine schedule, and early stopping with the best state kept."""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

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


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_factor: float = 0.0):
    """Linear warm-up over ``warmup_steps`` from ~0 to the base lr, then cosine decay to
    ``min_factor * lr`` at ``total_steps``."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(warmup_steps + 1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EarlyStopping:
    """Track a validation metric; keep a copy of the best state; say when to stop.

    ``mode="max"`` (accuracy, CIDEr, RSUM) or ``"min"`` (loss). Ties do not count as
    improvement, so the earliest best epoch wins."""

    def __init__(self, patience: int, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r}; expected 'max' or 'min'")
        self.patience, self.mode = patience, mode
        self.best = -math.inf if mode == "max" else math.inf
        self.best_epoch = -1
        self.best_state: dict[str, Any] | None = None
        self.bad = 0

    def step(self, value: float, model: nn.Module, epoch: int) -> bool:
        """Record ``value``; return True when training should stop."""
        better = value > self.best if self.mode == "max" else value < self.best
        if better or self.best_state is None:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad += 1
        return self.bad >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


class TrainCheckpoint:
    """The full state of a training loop after an epoch, written atomically (temp file + rename),
    so that ``resume`` continues exactly where an uninterrupted run would be: model, optimizer,
    learning-rate schedule, early-stopping state, the loop's generator and torch's global RNG
    (dropout, augmentation), and the history so far.

    ``path=None`` turns it off (every method does nothing)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None

    def save(
        self,
        epoch: int,
        stopped: bool,
        model_state: dict[str, Any],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        stopper: EarlyStopping,
        generator: torch.Generator,
        history: list[dict[str, Any]],
    ) -> None:
        if self.path is None:
            return
        state = {
            "epoch": epoch,
            "stopped": stopped,
            "model": model_state,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "stopper": {
                "best": stopper.best,
                "best_epoch": stopper.best_epoch,
                "bad": stopper.bad,
                "best_state": stopper.best_state,
            },  # fmt: skip
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        stopper: EarlyStopping,
        generator: torch.Generator,
        epochs: int,
    ) -> tuple[int, list[dict[str, Any]]]:
        """Load the checkpoint when there is one: ``(first epoch to run, history so far)``;
        ``(0, [])`` without one. A run that had stopped early resumes as finished."""
        if self.path is None or not self.path.is_file():
            return 0, []
        try:
            state = torch.load(self.path, weights_only=False)
            model.load_state_dict({**model.state_dict(), **state["model"]})
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, OSError, KeyError, ValueError, EOFError) as e:
            raise ValueError(
                f"{self.path}: not a checkpoint of this model and optimizer ({e}); delete it to start over"
            ) from e
        scheduler.load_state_dict(state["scheduler"])
        st = state["stopper"]
        stopper.best, stopper.best_epoch, stopper.bad, stopper.best_state = (
            st["best"],
            st["best_epoch"],
            st["bad"],
            st["best_state"],
        )
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = epochs if state["stopped"] else int(state["epoch"]) + 1
        return start, list(state["history"])

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


def end_epoch(
    rec: dict[str, Any],
    history: list[dict[str, Any]],
    epoch: int,
    value: float | None,
    model: Any,
    stopper: EarlyStopping,
    ckpt: TrainCheckpoint,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    log_fn: Any = None,
) -> bool:
    """What every task's training loop does after an epoch, in this order: record ``rec``, step
    early stopping on ``value`` (None: no validation, never stops), write the checkpoint, log.
    ``model``: anything with ``state_dict()`` (the part that trains). Returns True to stop."""
    history.append(rec)
    stop = value is not None and stopper.step(value, model, epoch)
    ckpt.save(epoch, stop, model.state_dict(), optimizer, scheduler, stopper, generator, history)
    if log_fn is not None:
        log_fn(rec)
    return stop
