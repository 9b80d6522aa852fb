"""Seeding and CPU threads (``cpu_threads`` lives in :mod:`fusionkit.runtime`, with the rule for how
many): what makes a training run repeatable and fast on a shared CPU."""

from __future__ import annotations

import numpy as np
import torch

from fusionkit.runtime import cpu_threads

__all__ = ["cpu_threads", "seed_everything"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's and numpy's global RNGs (dropout, augmentation, initialisation) and return a
    fresh generator seeded alike, for the loop's own draws (shuffles, sampled negatives)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)
