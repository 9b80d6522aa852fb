"""Early stopping on a named validation metric, keeping a copy of the best state."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

MODES = ("max", "min")


class EarlyStopping:
    """Track a validation metric; keep a copy of the best state; say when to stop.

    ``mode="max"`` (accuracy, CIDEr, RSUM) or ``"min"`` (loss). A value equal to the best is no
    improvement (the earliest best epoch wins) unless a tie-breaker is given: then the epoch
    with the lower ``tie`` value (e.g. the validation loss) wins the tie. The first epoch is
    always the best so far, whatever its value (even NaN)."""

    def __init__(self, patience: int, mode: str = "max"):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; expected one of {MODES}")
        self.patience, self.mode = patience, mode
        self.best = -math.inf if mode == "max" else math.inf
        self.best_tie = math.inf
        self.best_epoch = -1
        self.best_state: dict[str, Any] | None = None
        self.bad = 0

    def step(self, value: float, state: Callable[[], dict[str, Any]], epoch: int, tie: float | None = None) -> bool:
        """Record ``value`` (and its tie-breaker ``tie``, lower is better) of ``epoch``; copy
        ``state()`` when it is the best so far. Returns True when training should stop."""
        better = value > self.best if self.mode == "max" else value < self.best
        wins_tie = tie is not None and value == self.best and tie < self.best_tie
        if better or wins_tie or self.best_state is None:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            self.best_tie = math.inf if tie is None else tie
            self.best_state = copy.deepcopy(state())
            return False
        self.bad += 1
        return self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after a resume (the best state included)."""
        return {"best": self.best, "best_tie": self.best_tie, "best_epoch": self.best_epoch, "bad": self.bad,
                "best_state": self.best_state}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad = state["best"], state["best_epoch"], state["bad"]
        self.best_tie = state.get("best_tie", math.inf)
        self.best_state = state["best_state"]
