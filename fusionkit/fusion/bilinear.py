"""Low-rank bilinear pooling: MLB, MFB and MUTAN.

All three were defined for PAIRS (question, image). The n-ary generalisation used here is the same
for all three: the element-wise (Hadamard) product of the two projections becomes the Hadamard
product over ALL modalities' projections, i.e. a rank-constrained M-linear (instead of bilinear)
map. A missing modality contributes the neutral element 1 to the product, so the output is the
(multi)linear pooling of the present modalities only (with one modality present it degenerates to
a projection of that modality). Sequences are mean-pooled first.

MLB (Kim et al., 2017, "Hadamard Product for Low-rank Bilinear Pooling"):

    f = P^T (tanh(U_1 x_1 + b_1) * tanh(U_2 x_2 + b_2)) + p      ->  P^T (prod_m tanh(U_m x_m + b_m)) + p

MFB (Yu et al., 2017, "Multi-modal Factorized Bilinear Pooling"): ``k`` factors per output unit,

    e = (U_1 x_1) * (U_2 x_2)  in R^{k o}        ->  e = prod_m (U_m x_m + b_m)
    z = SumPool(e, k)  in R^o                     (sum of each non-overlapping window of k)
    z = sign(z) sqrt(|z|);  z = z / ||z||_2       (power and L2 normalisation)

MUTAN (Ben-younes et al., 2017, "MUTAN: Multimodal Tucker Fusion for VQA"): Tucker decomposition
with a rank-``R`` constrained core,

    x~_m = tanh(W_m x_m);  z = sum_{r=1}^R (W_1^r x~_1) * (W_2^r x~_2)  ->  z = sum_r prod_m (W_m^r x~_m)

(the paper's output factor ``W_o`` is left to the model's head).
"""

from __future__ import annotations

import torch
from torch import nn

from fusionkit.fusion._common import one_missing, pool
from fusionkit.fusion.base import Fusion, FusionOutput, Tensor, register
from fusionkit.fusion.space import Choice, Int


def _hadamard(parts: list[Tensor], masks: list[Tensor]) -> Tensor:
    out = None
    for p, mk in zip(parts, masks, strict=True):
        p = one_missing(p, mk)
        out = p if out is None else out * p
    return out


@register("mlb")
class MLBFusion(Fusion):
    """Multimodal Low-rank Bilinear pooling, n-ary: ``P^T(prod_m tanh(U_m x_m + b_m)) + p``.

    ``rank``: joint (Hadamard) dim; ``hidden``: output dim of ``P`` (``out_dim``)."""

    search_space = {"rank": Choice((64, 128, 256, 512))}

    def __init__(self, in_dims: dict[str, int], rank: int = 256, hidden: int = 128):
        super().__init__(in_dims)
        self.proj = nn.ModuleList(nn.Linear(d, rank) for d in self.in_dims.values())
        self.out = nn.Linear(rank, hidden)
        self.out_dim = hidden

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        parts = [torch.tanh(p(pool(features[m]))) for p, m in zip(self.proj, self.modalities, strict=True)]
        joint = _hadamard(parts, [mask[m] for m in self.modalities])
        return FusionOutput(fused=self.out(joint), weights=None)


@register("mfb")
class MFBFusion(Fusion):
    """Multi-modal Factorized Bilinear pooling, n-ary: Hadamard product of ``k * hidden`` dim
    projections, sum-pooled over windows of ``k``, signed square root, L2 normalised.
    ``out_dim = hidden``."""

    search_space = {"k": Int(2, 10), "hidden": Choice((64, 128, 256))}

    def __init__(self, in_dims: dict[str, int], k: int = 5, hidden: int = 128):
        super().__init__(in_dims)
        self.k = k
        self.proj = nn.ModuleList(nn.Linear(d, k * hidden) for d in self.in_dims.values())
        self.out_dim = hidden

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        parts = [p(pool(features[m])) for p, m in zip(self.proj, self.modalities, strict=True)]
        e = _hadamard(parts, [mask[m] for m in self.modalities])  # (B, k * o)
        z = e.view(e.shape[0], self.out_dim, self.k).sum(dim=-1)
        # signed square root; the eps keeps the gradient finite at z = 0
        z = torch.sign(z) * torch.sqrt(z.abs() + 1e-8)
        z = nn.functional.normalize(z, dim=-1)
        return FusionOutput(fused=z, weights=None)


@register("mutan")
class MUTANFusion(Fusion):
    """MUTAN Tucker fusion, n-ary: ``z = sum_r prod_m (W_m^r tanh(W_m x_m))``.

    ``dim``: size of the per-modality ``tanh`` projections; ``rank``: R; ``hidden``: out_dim."""

    search_space = {"dim": Choice((32, 64, 128)), "rank": Int(2, 10)}

    def __init__(self, in_dims: dict[str, int], dim: int = 64, rank: int = 5, hidden: int = 128):
        super().__init__(in_dims)
        self.rank = rank
        self.inp = nn.ModuleList(nn.Linear(d, dim) for d in self.in_dims.values())
        self.factors = nn.ModuleList(nn.Linear(dim, rank * hidden) for _ in self.in_dims)
        self.out_dim = hidden

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        parts = [
            f(torch.tanh(i(pool(features[m])))) for i, f, m in zip(self.inp, self.factors, self.modalities, strict=True)
        ]
        joint = _hadamard(parts, [mask[m] for m in self.modalities])  # (B, R * H)
        z = joint.view(joint.shape[0], self.rank, self.out_dim).sum(dim=1)
        return FusionOutput(fused=z, weights=None)
