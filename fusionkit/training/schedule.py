"""The learning-rate schedule every training loop uses: linear warm-up, then cosine decay."""

from __future__ import annotations

import math

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    *,
    peak_in_warmup: bool = False,
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` (stepped once per optimizer step): a linear ramp over the first
    ``warmup_steps`` steps, then cosine decay from the base lr to ``min_factor * lr`` at
    ``total_steps`` (and ``min_factor * lr`` after it).

    The ramp's factor at step ``s < warmup_steps`` is ``(s + 1) / warmup_steps`` with
    ``peak_in_warmup=True`` (the last warm-up step already runs at the base lr; the
    classification loop's ramp) and ``(s + 1) / (warmup_steps + 1)`` with ``False`` (the base lr
    is first reached by the first cosine step; the task loops' ramp). Tiny runs never divide by
    zero: ``warmup_steps=0`` means no warm-up, ``total_steps <= warmup_steps`` no decay span."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(warmup_steps + 1, int(total_steps))
    ramp = warmup_steps if peak_in_warmup else warmup_steps + 1

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / ramp
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
