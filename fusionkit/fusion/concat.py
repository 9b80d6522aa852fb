"""Early and late fusion: the two baselines every other method is compared against.

* ``concat`` (early fusion): ``z = [x_1; x_2; ...; x_M]`` over the mean-pooled modality vectors in
  sorted name order, missing modalities zeroed; ``out_dim = sum_m D_m``, or ``hidden`` with an
  optional ``Linear + GELU`` on top.
* ``late`` (late fusion): one MLP classifier per modality, ``s_m = MLP_m(x_m)`` (class logits),
  combined as ``z = sum_m w_m s_m`` with ``w_m = mask_m / sum_k mask_k`` (the mean over the
  PRESENT modalities) or, with ``learned_weights=True``, ``w = softmax_m(a_m)`` over the present
  modalities with one learned scalar ``a_m`` per modality. The output already is class logits.

Late fusion cannot solve problems whose label depends on an interaction of the modalities: its
decision function is additive, ``f(x_1) + g(x_2)``. For XOR of two signs it would need
``f(+) + g(+) < 0``, ``f(-) + g(-) < 0``, ``f(+) + g(-) > 0`` and ``f(-) + g(+) > 0``; summing the
first two and the last two gives the same quantity both < 0 and > 0, so at most 3 of the 4 cells
(75 %) can be right. (tests/fusion/test_methods.py checks this.)
"""

from __future__ import annotations

import torch
from torch import nn

from fusionkit.fusion._common import masked_softmax, pool, stack_mask, weights_dict, zero_missing
from fusionkit.fusion.base import Fusion, FusionOutput, Tensor, register
from fusionkit.fusion.space import Choice


@register("concat")
class ConcatFusion(Fusion):
    """Early fusion: concatenate the (mean-pooled) modality vectors, missing ones zeroed.

    ``z = [m_1 x_1; ...; m_M x_M]`` (sorted modality order), ``out_dim = sum_m D_m``; with
    ``hidden``: ``z' = GELU(W z + b)``, ``out_dim = hidden``. No modality weights."""

    def __init__(self, in_dims: dict[str, int], hidden: int | None = None):
        super().__init__(in_dims)
        total = sum(self.in_dims.values())
        self.proj = None if hidden is None else nn.Sequential(nn.Linear(total, hidden), nn.GELU())
        self.out_dim = total if hidden is None else hidden

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        z = torch.cat([zero_missing(pool(features[m]), mask[m]) for m in self.modalities], dim=-1)
        if self.proj is not None:
            z = self.proj(z)
        return FusionOutput(fused=z, weights=None)


@register("late")
class LateFusion(Fusion):
    """Late fusion: per-modality MLP classifiers whose logits are averaged over the present
    modalities (``learned_weights=False``) or mixed with learned per-modality weights
    ``w = softmax_m(a_m)`` renormalised over the present modalities (``learned_weights=True``).

    ``s_m = W2_m GELU(W1_m x_m + b1_m) + b2_m``; ``z = sum_m w_m s_m``; ``out_dim = num_classes``.
    The weights ``w_m`` are returned per sample (0 for a missing modality). A sample with every
    modality missing gets all-zero logits."""

    outputs_logits = True

    search_space = {"hidden": Choice((32, 64, 128)), "learned_weights": Choice((False, True))}

    def __init__(
        self,
        in_dims: dict[str, int],
        num_classes: int = 2,
        hidden: int = 64,
        learned_weights: bool = False,
    ):
        super().__init__(in_dims)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, num_classes))
            for d in self.in_dims.values()
        )
        self.learned_weights = learned_weights
        self.weight_logits = nn.Parameter(torch.zeros(len(self.modalities))) if learned_weights else None
        self.out_dim = num_classes

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        present = stack_mask(self.modalities, mask)  # (B, M)
        logits = torch.stack(
            [
                zero_missing(clf(pool(features[m])), mask[m])
                for clf, m in zip(self.classifiers, self.modalities, strict=True)
            ],
            dim=1,
        )  # (B, M, C)
        if self.weight_logits is None:
            w = present / present.sum(dim=1, keepdim=True).clamp_min(1e-12)
            w = w * (present > 0).to(w.dtype)
        else:
            w = masked_softmax(self.weight_logits.expand_as(present), present, dim=1)
        z = (w.unsqueeze(-1) * logits).sum(dim=1)
        return FusionOutput(fused=z, weights=weights_dict(self.modalities, w))
