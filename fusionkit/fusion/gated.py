"""Gated Multimodal Unit (Arevalo et al., 2017, "Gated Multimodal Units for Information Fusion").

Bimodal form of the paper (used when there are exactly 2 modalities, ``a`` < ``b`` in sorted order):

    h_a = tanh(W_a x_a),  h_b = tanh(W_b x_b)
    z   = sigmoid(W_z [x_a; x_b])                      (B, H): one gate per hidden unit
    h   = z * h_a + (1 - z) * h_b

n-ary generalisation (M >= 3): one gate vector per modality, normalised across modalities per
hidden unit with a softmax (for M = 2 this is exactly the sigmoid form, since
``sigmoid(g) = softmax([g, 0])_0``):

    h_m = tanh(W_m x_m)
    z_m = softmax_m(W_{z,m} [x_1; ...; x_M])           (B, H), sum_m z_m = 1 per unit
    h   = sum_m z_m * h_m

Missing modalities: their ``x_m`` is zeroed in the gate input and their gate logits are excluded
from the softmax (``z_m = 0``; with 2 modalities the other one gets ``z = 1``). The reported
per-sample modality weight is the gate averaged over hidden units, ``w_m = mean_j z_{m,j}``.
Sequences are mean-pooled first.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionkit.fusion._common import masked_softmax, pool, stack_mask, weights_dict, zero_missing
from fusionkit.fusion.base import Fusion, FusionOutput, Tensor, register
from fusionkit.fusion.space import Choice


@register("gmu")
class GMUFusion(Fusion):
    """Gated Multimodal Unit; ``hidden`` is the size of ``h`` (``out_dim``). Returns the mean gate
    per modality as per-sample weights."""

    search_space = {"hidden": Choice((64, 128, 256))}

    def __init__(self, in_dims: dict[str, int], hidden: int = 128):
        super().__init__(in_dims)
        n = len(self.modalities)
        self.hidden = hidden
        self.encoders = nn.ModuleList(nn.Linear(d, hidden, bias=False) for d in self.in_dims.values())
        total = sum(self.in_dims.values())
        # M = 2: one sigmoid gate vector (the paper's form); M >= 3: one gate vector per modality.
        self.gate = None if n == 1 else nn.Linear(total, hidden if n == 2 else n * hidden, bias=False)
        self.out_dim = hidden

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        present = stack_mask(self.modalities, mask)  # (B, M)
        xs = [zero_missing(pool(features[m]), mask[m]) for m in self.modalities]
        h = torch.stack([torch.tanh(enc(x)) for enc, x in zip(self.encoders, xs, strict=True)], dim=1)  # (B, M, H)
        n, batch = len(self.modalities), h.shape[0]
        if self.gate is None:
            logits = torch.zeros_like(h)
        else:
            g = self.gate(torch.cat(xs, dim=-1))
            logits = torch.stack([g, torch.zeros_like(g)], dim=1) if n == 2 else g.view(batch, n, self.hidden)
        z = masked_softmax(logits, present.unsqueeze(-1), dim=1)  # (B, M, H)
        fused = (z * h).sum(dim=1)
        return FusionOutput(fused=fused, weights=weights_dict(self.modalities, z.mean(dim=-1)))
