"""The per-epoch training checkpoint: written atomically, read back without unpickling anything."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fusionkit.training.early_stopping import EarlyStopping


class TrainCheckpoint:
    """The full state of a training loop after an epoch, written atomically (temp file + rename),
    so that a resumed run continues exactly where an uninterrupted run would be: model,
    optimizer, learning-rate schedule, early-stopping state, the loop's generator and torch's
    global RNG (dropout, augmentation), and the history so far.

    The file holds tensors, numbers, strings, lists and dicts only, and is read with
    ``torch.load(weights_only=True)``: a file holding anything else (any other pickled object)
    is refused, never unpickled. ``path=None`` turns it off (every method does nothing, no file
    is written)."""

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
            "stopper": stopper.state_dict(),
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

    def load(self) -> dict[str, Any]:
        """The checkpoint's contents; ValueError naming the file when it is not a checkpoint
        (unreadable, or holding anything but tensors and plain data)."""
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refusals come as pickle's UnpicklingError
            raise ValueError(
                f"{self.path}: not a training checkpoint (expected tensors and plain data only, read with "
                f"weights_only=True; nothing else is unpickled): {e}; delete it to start over"
            ) from e
        missing = [k for k in ("epoch", "stopped", "model", "optimizer", "scheduler", "stopper", "generator",
                               "torch_rng", "history") if not isinstance(state, dict) or k not in state]  # fmt: skip
        if missing:
            raise ValueError(f"{self.path}: not a training checkpoint (missing {missing}); delete it to start over")
        return state

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
        ``(0, [])`` without one. A run that had stopped early resumes as finished. The saved
        model state may cover only part of ``model`` (the part that trains)."""
        if self.path is None or not self.path.is_file():
            return 0, []
        state = self.load()
        try:
            model.load_state_dict({**model.state_dict(), **state["model"]})
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise ValueError(
                f"{self.path}: not a checkpoint of this model and optimizer ({e}); delete it to start over"
            ) from e
        scheduler.load_state_dict(state["scheduler"])
        stopper.load_state_dict(state["stopper"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = epochs if state["stopped"] else int(state["epoch"]) + 1
        return start, list(state["history"])

    def remove(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()
