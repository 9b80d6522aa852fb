"""Helpers the task modules share (not part of the public interface): the warm-up + cosine
schedule, early stopping with the best state kept, and training checkpoints. (The bad-input
policy and its written report are :mod:`fusionkit.data.problems`.)"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


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
