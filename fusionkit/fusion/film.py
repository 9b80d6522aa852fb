"""FiLM: feature-wise linear modulation (Perez et al., 2018, "FiLM: Visual Reasoning with a General
Conditioning Layer").

One modality, the ``target`` (default: ``"image"`` if there is one, else the first in sorted
order), is modulated feature-wise by the others, the conditioning modalities ``c``:

    c          = [x_c1; x_c2; ...]            mean-pooled, missing ones zeroed (n-ary: all others)
    dgamma, beta = G(c)                       G: Linear (or a 1-hidden-layer MLP with ``hidden``)
    gamma      = 1 + dgamma                   (the identity modulation at dgamma = 0)
    h_l        = W t_l + b                    for every element l of the target t: (B, L, D) or (B, D)
    y_l        = t_l + ReLU(gamma * h_l + beta)   a residual FiLM block, applied on the sequence/grid
    z          = mean_l y_l                   (B, D_target)

Missing modalities:
* every conditioning modality missing for a sample -> ``gamma = 1, beta = 0`` (a plain residual
  block of the target); a missing conditioning modality among others is just zeroed in ``c``;
* target missing -> ``t = 0``, so ``z = ReLU(gamma * b + beta)``: the output comes from the
  conditioning alone.
No modality weights.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionkit.fusion._common import pool, stack_mask, zero_missing
from fusionkit.fusion.base import Fusion, FusionOutput, Tensor, register


@register("film")
class FiLMFusion(Fusion):
    """FiLM-modulate the ``target`` modality with (gamma, beta) from all the other modalities.

    ``target``: modality to modulate (None: "image" if present, else the first sorted name);
    ``hidden``: hidden size of the (gamma, beta) generator (None: a single Linear).
    ``out_dim`` = the target's dim."""

    uses_sequences = True

    def __init__(self, in_dims: dict[str, int], target: str | None = None, hidden: int | None = None):
        super().__init__(in_dims)
        if target is None:
            target = "image" if "image" in self.in_dims else self.modalities[0]
        if target not in self.in_dims:
            raise ValueError(f"film: target {target!r} is not one of the modalities {self.modalities}")
        self.target = target
        self.conditioning = [m for m in self.modalities if m != target]
        d = self.in_dims[target]
        self.block = nn.Linear(d, d)
        cond_dim = sum(self.in_dims[m] for m in self.conditioning)
        if not self.conditioning:
            self.generator = None
        elif hidden is None:
            self.generator = nn.Linear(cond_dim, 2 * d)
        else:
            self.generator = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * d))
        self.out_dim = d

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        t = zero_missing(features[self.target], mask[self.target])
        batch, d = t.shape[0], t.shape[-1]
        if self.generator is None:
            gamma, beta = t.new_ones(batch, d), t.new_zeros(batch, d)
        else:
            c = torch.cat([zero_missing(pool(features[m]), mask[m]) for m in self.conditioning], dim=-1)
            dgamma, beta = self.generator(c).chunk(2, dim=-1)
            any_cond = (stack_mask(self.conditioning, mask) > 0).any(dim=1).to(t.dtype)
            gamma = 1 + zero_missing(dgamma, any_cond)
            beta = zero_missing(beta, any_cond)
        if t.dim() == 3:
            gamma, beta = gamma.unsqueeze(1), beta.unsqueeze(1)
        y = t + torch.relu(gamma * self.block(t) + beta)
        return FusionOutput(fused=pool(y), weights=None)
