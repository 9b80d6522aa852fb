"""What a training run returns (and what the task code saves as its ``"train"`` record)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrainResult:
    """One training run: the per-epoch records, which epoch was best on which metric, and how long
    it took.

    ``monitor``: the metric early stopping watched (empty when there was none to watch: then
    ``best_epoch`` is the last epoch and ``best_value`` is NaN). ``history``: one record per
    epoch run, including epochs run before a resume."""

    history: list[dict[str, float]] = field(default_factory=list)
    monitor: str = ""
    best_epoch: int = -1
    best_value: float = float("nan")
    epochs_run: int = 0
    train_time_s: float = 0.0

    @property
    def best_val_acc(self) -> float:
        """The best value under the name the classification and VQA callers use."""
        return self.best_value

    @property
    def best_rsum(self) -> float:
        """The best value under the name the retrieval callers use."""
        return self.best_value

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
