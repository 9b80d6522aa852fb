"""Seeding and CPU threads: what makes a training run repeatable and fast on a shared CPU."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's and numpy's global RNGs (dropout, augmentation, initialisation) and return a
    fresh generator seeded alike, for the loop's own draws (shuffles, sampled negatives)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Temporarily run torch's CPU ops on ``n`` threads (no-op for None)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
