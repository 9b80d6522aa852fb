"""The optimizer every fusionkit model trains with: AdamW with its fused kernel.

fusionkit's models are small (a fusion model on cached features has a few hundred thousand
parameters), so a CPU step is bound by the number of ops rather than by arithmetic, and the
per-tensor AdamW spends about six small ops on every parameter tensor. ``fused=True`` does the
same update in one kernel per tensor: up to 1.6x faster steps for the comparison's models
(``benchmarks/optimizer.py``), the same numbers up to float rounding. Parameters on a device
without the fused kernel get the per-tensor loop."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

FUSED_DEVICES = ("cpu", "cuda")


def adamw(params: Iterable[Any], **kw: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kw)``, fused where every parameter's device has the kernel;
    ``params``: tensors or parameter groups, as AdamW takes them."""
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in FUSED_DEVICES for p in tensors)
    return torch.optim.AdamW(params, fused=fused, **kw)
