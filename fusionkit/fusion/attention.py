"""Additive (Bahdanau) attention fusion, at two levels.

Level 1, within each modality ``m`` over its elements (regions / tokens / frames)
``x_{m,1..L_m}`` (a ``(B, D)`` vector is a sequence of length 1):

    e_{m,l}     = u_m^T tanh(W_m x_{m,l} + b_m)          (W_m: attn_dim x D_m, u_m: attn_dim)
    alpha_{m,l} = softmax_l(e_{m,l})
    s_m         = sum_l alpha_{m,l} x_{m,l}              (B, D_m): the modality summary

Level 2, over the modality summaries (first mapped to one common dim when the dims differ):

    e_m    = v^T tanh(V s_m + c)                         (shared V: attn_dim x D, v: attn_dim)
    beta_m = softmax_m(e_m) over the PRESENT modalities  (beta_m = 0 if m is missing)
    z      = sum_m beta_m s_m                            (B, D)

``beta`` is returned as the per-sample modality weights. A sample with every modality missing gets
``z = 0`` and all-zero weights.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionkit.fusion._common import CommonDim, as_sequence, masked_softmax, stack_mask, weights_dict, zero_missing
from fusionkit.fusion.base import Fusion, FusionOutput, Tensor, register
from fusionkit.fusion.space import Choice


class AdditiveAttention(nn.Module):
    """``a = softmax_l(u^T tanh(W x_l + b))`` over dim 1 of ``x: (B, L, D)``; returns
    ``(sum_l a_l x_l, a)``. ``present: (B, L)`` restricts the softmax (optional)."""

    def __init__(self, dim: int, attn_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, attn_dim)
        self.u = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, x: Tensor, present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        scores = self.u(torch.tanh(self.proj(x))).squeeze(-1)  # (B, L)
        a = torch.softmax(scores, dim=1) if present is None else masked_softmax(scores, present, dim=1)
        return (a.unsqueeze(-1) * x).sum(dim=1), a


@register("additive_attention")
class AdditiveAttentionFusion(Fusion):
    """Two-level additive attention: over each modality's elements, then over the modalities.

    Hyper-parameters: ``attn_dim`` (size of the tanh layer), ``dim`` (common dim for the second
    level; only needed when input dims differ). ``out_dim = dim``. Returns per-sample modality
    weights ``beta_m``."""

    uses_sequences = True

    search_space = {"attn_dim": Choice((32, 64, 128))}

    def __init__(self, in_dims: dict[str, int], attn_dim: int = 64, dim: int | None = None):
        super().__init__(in_dims)
        self.element_attn = nn.ModuleList(AdditiveAttention(d, attn_dim) for d in self.in_dims.values())
        self.common = CommonDim(self.in_dims, dim)
        self.modality_attn = AdditiveAttention(self.common.dim, attn_dim)
        self.out_dim = self.common.dim

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        summaries = [
            attn(as_sequence(features[m]))[0] for attn, m in zip(self.element_attn, self.modalities, strict=True)
        ]
        summaries = self.common(summaries)
        s = torch.stack(
            [zero_missing(x, mask[m]) for x, m in zip(summaries, self.modalities, strict=True)], dim=1
        )  # (B, M, D)
        z, beta = self.modality_attn(s, stack_mask(self.modalities, mask))
        return FusionOutput(fused=z, weights=weights_dict(self.modalities, beta))
