"""Weighted softmax fusion (the weighted fusion of our source material).

For the mean-pooled, projected modality features ``x_m`` (all of one dim ``D``):

    s_m = u_m^T x_m + b_m                      (one learned vector u_m per modality, optional bias b_m)
    w_m = exp(s_m) / sum_{k present} exp(s_k)  (softmax over the PRESENT modalities; w_m = 0 if missing)
    z   = sum_m w_m x_m                        (B, D)

The weights are per sample: they depend on the features, so a noisy or uninformative modality can
be down-weighted sample by sample. When the input dims differ (or ``dim`` is given), every modality
is first mapped to the common ``dim`` by its own ``Linear`` (default: the largest input dim).
A sample with every modality missing gets ``z = 0`` and all-zero weights.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionkit.fusion._common import CommonDim, masked_softmax, pool, stack_mask, weights_dict, zero_missing
from fusionkit.fusion.base import Fusion, FusionOutput, Tensor, register
from fusionkit.fusion.space import Choice


@register("weighted")
class WeightedFusion(Fusion):
    """``z = sum_m w_m x_m``, ``w_m = softmax_m(u_m^T x_m + b_m)`` over the present modalities.

    Hyper-parameters: ``dim`` (common dim, only needed when input dims differ), ``bias`` (learn
    ``b_m``). ``out_dim = dim``. Returns the per-sample weights ``w_m``."""

    search_space = {"bias": Choice((True, False))}

    def __init__(self, in_dims: dict[str, int], dim: int | None = None, bias: bool = True):
        super().__init__(in_dims)
        self.common = CommonDim(self.in_dims, dim)
        d = self.common.dim
        # u_m ~ N(0, 1/D): initial scores of order 1, so the softmax starts neither flat nor saturated.
        self.u = nn.Parameter(torch.randn(len(self.modalities), d) / d**0.5)
        self.b = nn.Parameter(torch.zeros(len(self.modalities))) if bias else None
        self.out_dim = d

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        present = stack_mask(self.modalities, mask)  # (B, M)
        xs = self.common([pool(features[m]) for m in self.modalities])
        x = torch.stack(
            [zero_missing(x, mask[m]) for x, m in zip(xs, self.modalities, strict=True)], dim=1
        )  # (B, M, D)
        scores = (x * self.u).sum(dim=-1)  # (B, M)
        if self.b is not None:
            scores = scores + self.b
        w = masked_softmax(scores, present, dim=1)
        z = (w.unsqueeze(-1) * x).sum(dim=1)
        return FusionOutput(fused=z, weights=weights_dict(self.modalities, w))
