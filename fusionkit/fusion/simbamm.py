"""SimBaMM, the Simple Baseline for Multimodal Learning (Wild, Eils & Rheude 2025, "Fusion or
Confusion? Multimodal Complexity Is Not All You Need", arXiv:2512.22991): a late-fusion
Transformer over the modalities' embeddings. The paper's model includes the per-modality encoders;
here they (and the projectors) sit outside the fusion, in ``MultimodalModel``, and this module is
the part after them, in its one-token-per-modality form (a sequence is mean-pooled to one token).

Every modality ``m`` is mean-pooled over its elements (a ``(B, D_m)`` vector is used as is),
mapped to the shared width ``D`` by its own Linear ``P_m`` and tagged with a learned
modality-type embedding ``e_m``; a learned CLS token ``c`` is put in front, a small pre-LN
Transformer encoder runs over the ``M + 1`` tokens, and the CLS output is the fused vector:

    t_m = P_m(mean_l x_{m,l}) + e_m                      (B, D), one token per modality
    H   = TransformerEncoder([c; t_1; ...; t_M])          (B, 1 + M, D), pre-LN (norm_first)
    z   = LayerNorm(H_0)                                  (B, D): the CLS output

Missing modalities: the token of a missing modality ``m`` is put in ``src_key_padding_mask``
(its features are zeroed beforehand too), so no query attends to it and it cannot reach the CLS output in any
layer; the CLS token is never masked, so a sample with every modality missing still has one key
to attend to and gets a finite output (a function of the parameters only). The encoder is built
with ``enable_nested_tensor=False``: PyTorch's nested-tensor fast path (inference only) would drop
the padded tokens instead of masking them, so evaluation would not run the computation training
runs (with ``norm_first`` it is off anyway, with a warning; saying so keeps it off and quiet).
No modality weights.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionkit.fusion._common import pool, stack_mask, zero_missing
from fusionkit.fusion.base import Fusion, FusionOutput, Tensor, register
from fusionkit.fusion.space import Choice


@register("simbamm")
class SimBaMMFusion(Fusion):
    """SimBaMM: a small Transformer over a CLS token and one token per modality; z = its CLS output.

    Each token is the modality's (mean-pooled) features through its own Linear plus a learned
    modality-type embedding; the CLS output goes through a final LayerNorm.

    Hyper-parameters: ``dim``: the shared token width (a multiple of ``heads``; None: the largest
    input dim, rounded up to a multiple of ``heads``; in ``MultimodalModel`` every input is the
    projectors' ``hidden``, so ``dim = hidden`` when ``heads`` divides it); ``layers``: encoder layers; ``heads``: attention heads;
    ``ff_mult``: feed-forward width as a multiple of ``dim``; ``dropout``: in the encoder.
    ``out_dim = dim``."""

    search_space = {"layers": Choice((1, 2)), "heads": Choice((1, 2, 4))}

    def __init__(
        self,
        in_dims: dict[str, int],
        dim: int | None = None,
        layers: int = 1,
        heads: int = 4,
        ff_mult: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__(in_dims)
        if heads < 1 or layers < 1 or ff_mult < 1:
            raise ValueError(f"simbamm: heads, layers and ff_mult must be >= 1, got {heads}, {layers}, {ff_mult}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"simbamm: dropout must be in [0, 1), got {dropout}")
        if dim is None:
            dim = -(-max(self.in_dims.values()) // heads) * heads
        elif dim < 1 or dim % heads:
            raise ValueError(f"simbamm: heads={heads} must divide dim={dim} (choose dim as a multiple of heads)")
        n = len(self.modalities)
        self.proj = nn.ModuleList(nn.Linear(d, dim) for d in self.in_dims.values())
        self.modality_embedding = nn.Parameter(torch.empty(n, dim))
        self.cls = nn.Parameter(torch.empty(dim))
        nn.init.normal_(self.modality_embedding, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=ff_mult * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, features: dict[str, Tensor], mask: dict[str, Tensor] | None = None) -> FusionOutput:
        mask = self.check_inputs(features, mask)
        tokens = torch.stack(
            [p(zero_missing(pool(features[m]), mask[m])) for p, m in zip(self.proj, self.modalities, strict=True)],
            dim=1,
        )  # (B, M, D)
        tokens = tokens + self.modality_embedding
        batch = tokens.shape[0]
        seq = torch.cat([self.cls.expand(batch, 1, -1), tokens], dim=1)  # (B, 1 + M, D)
        missing = stack_mask(self.modalities, mask) <= 0  # (B, M), True = ignored by attention
        padding = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=missing.device), missing], dim=1)
        h = self.encoder(seq, src_key_padding_mask=padding)
        return FusionOutput(fused=self.norm(h[:, 0]), weights=None)
