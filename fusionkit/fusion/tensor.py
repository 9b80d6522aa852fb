"""Tensor fusion (TFN) and its low-rank approximation (LMF). Both are n-ary by construction.

TFN (Zadeh et al., 2017, "Tensor Fusion Network for Multimodal Sentiment Analysis"):

    z_m = [W_m x_m; 1]                         (dim + 1): projected to a small ``dim`` first
    Z   = z_1 (x) z_2 (x) ... (x) z_M          outer product, flattened: prod_m (dim + 1) values

The appended 1 keeps every lower-order term: Z contains the unimodal vectors, all pairwise
products, ..., and the full M-way products. It also makes missing modalities easy: a missing
modality's ``z_m`` is ``[0; 1]``, so Z reduces to the tensor of the others (padded with zeros).
The size grows as ``(dim + 1)^M``, so keep ``dim`` small (default 16: 289 values for 2 modalities,
4 913 for 3); a warning is issued above 65 536 values.

LMF (Liu et al., 2018, "Efficient Low-rank Multimodal Fusion with Modality-Specific Factors"):
the weight tensor ``W`` of ``h = W . Z`` is decomposed into ``rank`` modality-specific factors
``W_m^{(i)}`` (``(D_m + 1) x H``), so that without ever building Z

    h = sum_{i=1}^{r} lambda_i * prod_m (W_m^{(i)} [x_m; 1]) + b     (products element-wise)

The factors are ``nn.Parameter``s in an ``nn.ParameterList`` (MultiBench kept them in a Python list,
so they were never registered, moved to the GPU or trained); ``lambda`` (the fusion weights) and
``b`` are registered too: ``len(list(lmf.parameters())) == M + 2``.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from fusionkit.fusion._common import pool, zero_missing
from fusionkit.fusion.base import Fusion, FusionOutput, Tensor, register
from fusionkit.fusion.space import Choice, Int

TFN_WARN_SIZE = 65_536


def _append_one(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=-1)


@register("tfn")
class TensorFusion(Fusion):
    """Tensor Fusion Network: flattened outer product of ``[W_m x_m; 1]`` over the modalities.

    ``dim``: size each modality is projected to first (None: use the input dims as they are);
    ``hidden``: optional ``Linear + GELU`` on the flattened tensor. ``out_dim`` is
    ``prod_m (dim_m + 1)`` or ``hidden``. No modality weights."""

    search_space = {"dim": Choice((8, 16, 24))}

    def __init__(self, in_dims: dict[str, int], dim: int | None = 16, hidden: int | None = None):
        super().__init__(in_dims)
        if dim is None:
            self.proj = None
            dims = list(self.in_dims.values())
        else:
            self.proj = nn.ModuleList(nn.Linear(d, dim) for d in self.in_dims.values())
            dims = [dim] * len(self.modalities)
        size = math.prod(d + 1 for d in dims)
        if size > TFN_WARN_SIZE:
            warnings.warn(
                f"tfn: the fused tensor has {size} values per sample (dims {dims}); "
                "pass a smaller `dim` (e.g. 16) to project the modalities first",
                stacklevel=2,
            )
        self.tensor_size = size
        self.post = None if hidden is None else nn.Sequential(nn.Linear(size, hidden), nn.GELU())
        self.out_dim = size if hidden is None else hidden

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        z = None
        for i, m in enumerate(self.modalities):
            x = pool(features[m])
            if self.proj is not None:
                x = self.proj[i](x)
            x = _append_one(zero_missing(x, mask[m]))
            z = x if z is None else (z.unsqueeze(-1) * x.unsqueeze(1)).flatten(1)
        if self.post is not None:
            z = self.post(z)
        return FusionOutput(fused=z, weights=None)


@register("lmf")
class LowRankFusion(Fusion):
    """Low-rank Multimodal Fusion: ``h = sum_i lambda_i prod_m (W_m^{(i)} [x_m; 1]) + b``.

    ``rank``: number of factors r; ``hidden``: output size H (``out_dim``). Parameters: one factor
    tensor ``(r, D_m + 1, H)`` per modality, ``lambda`` ``(r,)`` and ``b`` ``(H,)``. Missing
    modalities enter as ``[0; 1]`` (their factor's constant row). No modality weights."""

    search_space = {"rank": Int(2, 16), "hidden": Choice((32, 64, 128))}

    def __init__(self, in_dims: dict[str, int], rank: int = 4, hidden: int = 64):
        super().__init__(in_dims)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        # std 1/sqrt(D+1): each factor output has unit variance for unit-variance inputs, so the
        # product over modalities neither explodes nor vanishes at initialisation.
        self.factors = nn.ParameterList(
            nn.Parameter(torch.randn(rank, d + 1, hidden) / math.sqrt(d + 1)) for d in self.in_dims.values()
        )
        self.fusion_weights = nn.Parameter(torch.randn(rank) / math.sqrt(rank))
        self.fusion_bias = nn.Parameter(torch.zeros(hidden))
        self.out_dim = hidden

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        prod = None
        for factor, m in zip(self.factors, self.modalities, strict=True):
            x = _append_one(zero_missing(pool(features[m]), mask[m]))  # (B, D+1)
            f = torch.einsum("bd,rdh->rbh", x, factor)
            prod = f if prod is None else prod * f
        h = torch.einsum("r,rbh->bh", self.fusion_weights, prod) + self.fusion_bias
        return FusionOutput(fused=h, weights=None)
