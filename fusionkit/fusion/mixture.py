"""A learned mixture of fusion methods.

Every method in ``methods`` is built (default hyper-parameters) on the same inputs; each output is
mapped to ``hidden`` by its own Linear, and a gate over the methods mixes them per sample:

    o_k = P_k fusion_k(x, mask)                                (B, hidden)
    g   = softmax_k(G [m_1 x_1; ...; m_M x_M; m_1; ...; m_M])   (B, K): sees the pooled present
                                                                 features and which are present
    z   = sum_k g_k o_k

The gate weights are over METHODS, not modalities, so ``weights`` is None. Methods whose output
already is class logits (``late``) and nested mixtures are not allowed.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionkit.fusion._common import pool, stack_mask, zero_missing
from fusionkit.fusion.base import Fusion, FusionOutput, Tensor, build_fusion, get, register
from fusionkit.fusion.space import Choice


@register("mixture")
class MixtureFusion(Fusion):
    """Per-sample softmax gate over several fusion methods. ``methods``: registered names;
    ``hidden``: common output size (``out_dim``)."""

    search_space = {"hidden": Choice((64, 128, 256))}

    def __init__(
        self,
        in_dims: dict[str, int],
        methods: tuple[str, ...] = ("concat", "weighted", "gmu", "lmf"),
        hidden: int = 128,
    ):
        super().__init__(in_dims)
        methods = tuple(methods)
        if len(methods) < 1 or len(set(methods)) != len(methods):
            raise ValueError(f"mixture: `methods` must be distinct registered names, got {methods}")
        for name in methods:
            cls = get(name)  # KeyError listing the valid names
            if cls.outputs_logits or name == "mixture":
                raise ValueError(f"mixture: {name!r} cannot be mixed (it outputs logits or is a mixture)")
        self.methods = methods
        self.fusions = nn.ModuleList(build_fusion(name, self.in_dims) for name in methods)
        self.uses_sequences = any(f.uses_sequences for f in self.fusions)
        self.proj = nn.ModuleList(nn.Linear(f.out_dim, hidden) for f in self.fusions)
        n = len(self.modalities)
        self.gate = nn.Linear(sum(self.in_dims.values()) + n, len(methods))
        self.out_dim = hidden

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        outs = torch.stack(
            [p(f(features, mask).fused) for f, p in zip(self.fusions, self.proj, strict=True)], dim=1
        )  # (B, K, hidden)
        gate_in = torch.cat(
            [zero_missing(pool(features[m]), mask[m]) for m in self.modalities] + [stack_mask(self.modalities, mask)],
            dim=-1,
        )
        g = torch.softmax(self.gate(gate_in), dim=-1)
        return FusionOutput(fused=(g.unsqueeze(-1) * outs).sum(dim=1), weights=None)
