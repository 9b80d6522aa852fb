"""The one warm-up + cosine schedule reproduces both ramps the loops used before it, step by step."""

from __future__ import annotations

import math

import pytest
import torch

from fusionkit.training import warmup_cosine


def old_classification_factor(step: int, total_steps: int, warmup_frac: float) -> float:
    """``fusionkit/train.py``'s schedule before fusionkit.training (verbatim)."""
    warm = max(1, int(round(warmup_frac * total_steps)))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total_steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def old_task_factor(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """``fusionkit/tasks/_common.py``'s schedule before fusionkit.training (verbatim)."""
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(warmup_steps + 1, int(total_steps))
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))


def lrs(sched_factory, n_steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = sched_factory(opt)
    out = []
    for _ in range(n_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total", [1, 2, 3, 7, 10, 33, 120])
@pytest.mark.parametrize("frac", [0.0, 0.05, 0.1, 0.2, 0.5])
def test_both_old_ramps_exactly(total, frac):
    n = total + 3  # past the end too
    cls_warm = max(1, round(frac * total))
    got = lrs(lambda o: warmup_cosine(o, total, cls_warm, peak_in_warmup=True), n)
    assert got == [old_classification_factor(s, total, frac) for s in range(n)]
    task_warm = int(frac * total)
    got = lrs(lambda o: warmup_cosine(o, total, task_warm), n)
    assert got == [old_task_factor(s, task_warm, total) for s in range(n)]
    got = lrs(lambda o: warmup_cosine(o, total, task_warm, min_factor=0.1), n)
    assert got == [old_task_factor(s, task_warm, total, 0.1) for s in range(n)]


def test_shape_of_the_two_ramps():
    peak = lrs(lambda o: warmup_cosine(o, 10, 2, peak_in_warmup=True), 10)
    assert peak[:3] == [0.5, 1.0, 1.0]  # the base lr on the last warm-up step
    assert all(a >= b for a, b in zip(peak[2:], peak[3:])) and peak[-1] < 0.1
    late = lrs(lambda o: warmup_cosine(o, 10, 2), 10)
    assert late[:3] == [1 / 3, 2 / 3, 1.0]  # the base lr one step after the warm-up
    floor = lrs(lambda o: warmup_cosine(o, 4, 0, min_factor=0.25), 6)
    assert floor[0] == 1.0 and floor[4:] == [0.25, 0.25]
    for peak_in_warmup in (True, False):  # tiny runs never divide by zero
        assert lrs(lambda o, p=peak_in_warmup: warmup_cosine(o, 1, 0, peak_in_warmup=p), 2) == [1.0, 0.0]
