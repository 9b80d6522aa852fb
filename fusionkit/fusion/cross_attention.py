"""Cross-modal attention (MulT-style; Tsai et al., 2019, "Multimodal Transformer for Unaligned
Multimodal Language Sequences").

Every modality ``i`` (the target, its elements are the queries) attends to every other modality
``j`` (keys and values) with its own ``nn.MultiheadAttention`` (one per ordered pair, M(M-1) in
all); a ``(B, D)`` input is a sequence of length 1:

    c_{i<-j} = mean_l MHA_{ij}(Q = x_i, K = V = x_j)_l                 (B, D)
    h_i      = mean_l x_{i,l} + sum_{j != i} c_{i<-j}                  (residual)
    z        = [h_1; h_2; ...; h_M]                                    (B, M D)

Missing modalities: a missing source ``j`` gets ``key_padding_mask = True`` for all its elements;
the attention also has a learned-free "attend to nothing" slot (``add_zero_attn``: an all-zero key
and value), so a query whose keys are all padded attends only to that slot and
``c_{i<-j}`` is the constant ``out_proj.bias``. A missing target ``i`` has ``h_i = 0``.
When the input dims differ (or are not a multiple of ``heads``, or exceed :data:`MAX_DIM`), every
modality is first mapped to one common ``dim`` by its own Linear. No modality weights.

The common dim is at most :data:`MAX_DIM` (128) unless ``dim`` says otherwise: MulT itself
attends at d = 30-40, and at the largest input dim (1280 for pooled EfficientNet features) the six
attentions of three modalities held 39M parameters and trained 2.3x slower than any other method
of the comparison.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionkit.fusion._common import CommonDim, as_sequence, zero_missing
from fusionkit.fusion.base import Fusion, FusionOutput, Tensor, register
from fusionkit.fusion.space import Choice

#: the common dim when ``dim`` is not given: the largest input dim, at most this
MAX_DIM = 128


@register("cross_attention")
class CrossAttentionFusion(Fusion):
    """Pairwise cross-modal multi-head attention, pooled and concatenated.

    ``heads``: attention heads; ``dim``: common dim (a multiple of ``heads``; None: the largest
    input dim, at most :data:`MAX_DIM`, rounded up). ``out_dim = M * dim``."""

    uses_sequences = True

    search_space = {"heads": Choice((1, 2, 4, 8))}

    def __init__(self, in_dims: dict[str, int], heads: int = 4, dim: int | None = None):
        super().__init__(in_dims)
        self.common = CommonDim(self.in_dims, dim, multiple_of=heads, max_dim=MAX_DIM)
        d, n = self.common.dim, len(self.modalities)
        self.pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        self.attn = nn.ModuleDict(
            {f"{i}_{j}": nn.MultiheadAttention(d, heads, batch_first=True, add_zero_attn=True) for i, j in self.pairs}
        )
        self.out_dim = n * d

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        xs = self.common([as_sequence(features[m]) for m in self.modalities])
        masks = [mask[m] for m in self.modalities]
        # a missing modality's features are zeroed too, so nothing of them can reach any output
        xs = [zero_missing(x, mk) for x, mk in zip(xs, masks, strict=True)]
        pads = [(mk <= 0).unsqueeze(1).expand(-1, x.shape[1]) for x, mk in zip(xs, masks, strict=True)]
        hs = [x.mean(dim=1) for x in xs]
        for i, j in self.pairs:
            out, _ = self.attn[f"{i}_{j}"](xs[i], xs[j], xs[j], key_padding_mask=pads[j], need_weights=False)
            hs[i] = hs[i] + out.mean(dim=1)
        z = torch.cat([zero_missing(h, mk) for h, mk in zip(hs, masks, strict=True)], dim=-1)
        return FusionOutput(fused=z, weights=None)
