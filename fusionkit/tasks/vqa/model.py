"""The VQA answer classifier: image regions and the question, fused by any registered fusion
method, with question-guided glimpses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fusionkit.fusion import build_fusion, get
from fusionkit.model import Projector

Tensor = torch.Tensor


class VQANet(torch.nn.Module):
    """Answer classifier: image regions (or the pooled vector) and the question, fused by a
    registered fusion method, then an MLP over the answers.

    * image branch, computed once per *image* (all its questions share it): a fixed PCA whitening
      (``pca_dim``, fitted on the training images), ``Projector`` to ``hidden``, learned region
      positions, ``context_layers`` Transformer encoder layers over the regions (a region learns
      about its neighbours: counting, "left of");
    * question branch: ``Projector`` of the sentence vector;
    * question-guided glimpses (``glimpses`` > 0; Yang et al. 2016 "Stacked Attention Networks",
      the glimpses of MCB/MFB/BAN): ``e = w^T tanh(W_r r_l + W_q q)`` per region and glimpse; a
      softmax glimpse ``sum_l softmax(e)_l r_l`` (what the question is about) and a count glimpse
      ``mean_l sigmoid(e)_l r_l`` (how much of it there is) per glimpse. The fusion then sees the
      ``2 * glimpses`` vectors as the image sequence; ``glimpses=0``: all regions;
    * fusion: ``build_fusion(method, {"image": hidden, "question": hidden})``; head:
      Linear-GELU-Dropout-Linear (none when the method outputs logits itself)."""

    def __init__(
        self,
        method: str,
        image_dim: int,
        question_dim: int,
        num_answers: int,
        *,
        n_regions: int = 0,
        hidden: int = 128,
        dropout: float = 0.1,
        context_layers: int = 1,
        heads: int = 4,
        glimpses: int = 2,
        pca_dim: int = 0,
        **fusion_hparams: Any,
    ):
        super().__init__()
        from torch import nn

        self.method, self.n_regions = method, int(n_regions)
        self.pca_dim = int(pca_dim) if pca_dim and pca_dim < image_dim else 0
        if self.pca_dim:
            self.register_buffer("pca_mean", torch.zeros(image_dim))
            self.register_buffer("pca_proj", torch.zeros(image_dim, self.pca_dim))
        self.image_proj = Projector(self.pca_dim or image_dim, hidden, dropout)
        self.question_proj = Projector(question_dim, hidden, dropout)
        self.region_pos = nn.Parameter(torch.randn(self.n_regions, hidden) * 0.02) if self.n_regions else None
        self.context: nn.Module | None = None
        if self.n_regions and context_layers:
            layer = nn.TransformerEncoderLayer(
                hidden, heads, 2 * hidden, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.context = nn.TransformerEncoder(layer, context_layers, enable_nested_tensor=False)
        self.glimpses = int(glimpses) if self.n_regions else 0
        if self.glimpses:
            self.att_r = nn.Linear(hidden, hidden)
            self.att_q = nn.Linear(hidden, hidden)
            self.att_w = nn.Linear(hidden, self.glimpses)
        if get(method).outputs_logits:
            fusion_hparams.setdefault("num_classes", num_answers)
        self.fusion = build_fusion(method, {"image": hidden, "question": hidden}, **fusion_hparams)
        if self.fusion.outputs_logits:
            self.head: nn.Module = nn.Identity()
        else:
            self.head = nn.Sequential(
                nn.Linear(self.fusion.out_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_answers)
            )

    @torch.no_grad()
    def fit_pca(self, images: Tensor) -> None:
        """Fit the whitening PCA on training image features (all regions, or the pooled vectors)."""
        if not self.pca_dim:
            return
        x = images.reshape(-1, images.shape[-1]).double()
        mean = x.mean(0)
        cov = (x - mean).T @ (x - mean) / max(1, len(x) - 1)
        vals, vecs = torch.linalg.eigh(cov)
        top = vals.flip(0)[: self.pca_dim].clamp(min=1e-8)
        self.pca_mean.copy_(mean.float())
        self.pca_proj.copy_((vecs.flip(1)[:, : self.pca_dim] / top.sqrt()).float())

    def encode_images(self, image: Tensor) -> Tensor:
        image = image.float()
        if self.pca_dim:
            image = (image - self.pca_mean) @ self.pca_proj
        x = self.image_proj(image)
        if x.dim() == 3:
            if self.region_pos is None or x.shape[1] != self.n_regions:
                raise ValueError(f"this model was built for {self.n_regions} regions; got {tuple(image.shape)}")
            x = x + self.region_pos
            if self.context is not None:
                x = self.context(x)
        return x

    def attend(
        self, regions: Tensor, question: Tensor, image_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """(the image input of the fusion, the softmax attention ``(B, L, G)`` or None)."""
        if image_index is None:
            image_index = torch.arange(len(question), device=question.device)
        if regions.dim() == 2 or not self.glimpses:
            return regions.index_select(0, image_index), None
        # index_select, not regions[image_index]: the backward of advanced indexing with repeated
        # indices (a batch's questions share their image) accumulates with atomic adds on 2+
        # threads, so its gradients change with timing; index_select's backward (index_add_) does not
        keys = self.att_r(regions).index_select(0, image_index)  # per image, then shared by its questions
        r = regions.index_select(0, image_index)
        e = self.att_w(torch.tanh(keys + self.att_q(question).unsqueeze(1)))  # (B, L, G)
        soft = torch.softmax(e, dim=1)
        count = torch.sigmoid(e) / e.shape[1]
        img = torch.cat([soft.transpose(1, 2) @ r, count.transpose(1, 2) @ r], dim=1)  # (B, 2G, d)
        return img, soft

    def forward(self, image: Tensor, question: Tensor, image_index: Tensor | None = None) -> Tensor:
        regions = self.encode_images(image)
        q = self.question_proj(question.float())
        img, _ = self.attend(regions, q, image_index)
        return self.head(self.fusion({"image": img, "question": q}).fused)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


#: the name the question-only baseline is saved and reported under
QUESTION_ONLY = "question_only"


class QuestionOnlyNet(torch.nn.Module):
    """The question-only baseline: the question branch and the answer classifier of
    :class:`VQANet` (``Projector`` of the sentence vector, Linear-GELU-Dropout-Linear), no image.
    Called like a VQANet (the image arguments are ignored), so it trains and predicts through the
    same code; what it gets right needs no image."""

    method = QUESTION_ONLY

    def __init__(self, question_dim: int, num_answers: int, *, hidden: int = 128, dropout: float = 0.1, **_: Any):
        super().__init__()
        from torch import nn

        self.question_proj = Projector(question_dim, hidden, dropout)
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_answers)
        )

    def fit_pca(self, images: Tensor) -> None:
        """Nothing to fit: no image branch."""

    def forward(self, image: Tensor, question: Tensor, image_index: Tensor | None = None) -> Tensor:
        return self.head(self.question_proj(question.float()))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_vqa_net(meta: Mapping[str, Any]) -> VQANet | QuestionOnlyNet:
    if meta["method"] == QUESTION_ONLY:
        return QuestionOnlyNet(meta["question_dim"], meta["num_answers"], **meta["hparams"])
    return VQANet(meta["method"], meta["image_dim"], meta["question_dim"], meta["num_answers"], **meta["hparams"])
