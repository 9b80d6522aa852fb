"""Small helpers shared by the fusion modules (not part of the public interface)."""

from __future__ import annotations

import torch
from torch import nn

from fusionkit.fusion.base import Tensor


def pool(x: Tensor) -> Tensor:
    """Mean-pool a ``(B, L, D)`` sequence to ``(B, D)``; a ``(B, D)`` vector is returned as is."""
    return x.mean(dim=1) if x.dim() == 3 else x


def as_sequence(x: Tensor) -> Tensor:
    """A ``(B, D)`` vector becomes a sequence of length 1, ``(B, 1, D)``."""
    return x.unsqueeze(1) if x.dim() == 2 else x


def masked_softmax(scores: Tensor, present: Tensor, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` restricted to the entries where ``present`` is non-zero.

    Missing entries get weight exactly 0. A row with no present entry gets all-zero weights
    (instead of the NaNs a plain ``-inf`` fill would give)."""
    keep = present > 0
    any_present = keep.any(dim=dim, keepdim=True)
    scores = scores.masked_fill(~keep, float("-inf"))
    scores = torch.where(any_present, scores, torch.zeros_like(scores))
    return torch.softmax(scores, dim=dim) * keep.to(scores.dtype)


def weights_dict(modalities: list[str], weights: Tensor) -> dict[str, Tensor]:
    """``(B, M)`` weights in sorted modality order -> ``{modality: (B,)}``."""
    return {m: weights[:, i] for i, m in enumerate(modalities)}


def stack_mask(modalities: list[str], mask: dict[str, Tensor]) -> Tensor:
    """``{modality: (B,)}`` -> ``(B, M)`` in sorted modality order."""
    return torch.stack([mask[m] for m in modalities], dim=1)


def zero_missing(x: Tensor, mask: Tensor) -> Tensor:
    """Zero the samples of ``x`` (``(B, ...)``) whose ``mask`` entry is 0.

    Uses ``torch.where`` rather than a product so the result cannot depend on the missing values
    at all (a product would still propagate an inf from an intermediate overflow)."""
    keep = (mask > 0).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(keep, x, torch.zeros_like(x))


def one_missing(x: Tensor, mask: Tensor) -> Tensor:
    """Replace the samples of ``x`` whose ``mask`` entry is 0 by ones (the neutral element of a
    Hadamard product)."""
    keep = (mask > 0).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(keep, x, torch.ones_like(x))


class CommonDim(nn.Module):
    """Bring every modality to one common dim.

    ``dim=None`` and equal input dims (at most ``max_dim``): identity (no parameters). Otherwise
    one ``Linear`` per modality to ``dim`` (default: the largest input dim, at most ``max_dim``).
    Works on ``(B, D)`` and ``(B, L, D)``."""

    def __init__(self, in_dims: dict[str, int], dim: int | None = None, multiple_of: int = 1,
                 max_dim: int | None = None):  # fmt: skip
        super().__init__()
        dims = sorted(set(in_dims.values()))
        largest = max(dims) if max_dim is None else min(max(dims), max_dim)
        if dim is None and len(dims) == 1 and dims[0] == largest and dims[0] % multiple_of == 0:
            self.dim = dims[0]
            self.proj = None
        else:
            target = dim if dim is not None else largest
            if target % multiple_of:
                if dim is not None:
                    raise ValueError(f"dim={dim} must be a multiple of {multiple_of}")
                target = -(-target // multiple_of) * multiple_of
            self.dim = target
            self.proj = nn.ModuleList(nn.Linear(d, target) for _, d in sorted(in_dims.items()))

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        if self.proj is None:
            return list(xs)
        return [p(x) for p, x in zip(self.proj, xs, strict=True)]
