"""Re-ranking the dual encoder's top-k with an image-text matching model (any fusion method) trained
on hard negatives."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fusionkit import bundle
from fusionkit.model import build_model
from fusionkit.tasks.retrieval.data import RetrievalSplit
from fusionkit.tasks.retrieval.dual_encoder import DualEncoder, encode_split
from fusionkit.tasks.retrieval.ranking import metrics_from_ranks, retrieval_ranks, topk_similarity
from fusionkit.training import Step, TrainResult, adamw, fit, warmup_cosine

Tensor = torch.Tensor


class MatchingModel(nn.Module):
    """Image-text matching: a fusion method (by registry name) on ``{"image", "text"}`` and an
    MLP head to one logit per pair (``fusionkit.model.build_model`` with one output)."""

    def __init__(
        self, method: str, image_dim: int, text_dim: int, hidden: int = 128, dropout: float = 0.1, **fusion_hparams: Any
    ):
        super().__init__()

        self.net = build_model(
            method, {"image": image_dim, "text": text_dim}, 1, hidden=hidden, dropout=dropout, **fusion_hparams
        )
        self.method = method

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        return self.net({"image": image, "text": text}).logits.squeeze(-1)


def build_matcher(
    method: str, image_dim: int, text_dim: int, hidden: int = 128, dropout: float = 0.1, **fusion_hparams: Any
) -> MatchingModel:
    return MatchingModel(method, image_dim, text_dim, hidden, dropout, **fusion_hparams)


def load_matcher(path: str | os.PathLike) -> tuple[MatchingModel, dict[str, Any]]:
    """A saved matcher (``matcher.safetensors``, kind ``matcher``: what retrieval's training writes
    and a retrieval bundle carries): (model in eval mode, its description - ``method``, ``rerank_k``,
    ``mix`` ...)."""
    meta = bundle.read_meta(path, kind="matcher")
    model = build_matcher(meta["method"], meta["image_dim"], meta["text_dim"], **meta["hparams"])
    return bundle.load_weights(model, path), meta


@torch.inference_mode()
def rescore(matcher: nn.Module, image: Tensor, text: Tensor, cosine: Tensor, mix: float) -> Tensor:
    """The re-ranking score of candidate pairs: ``matcher(image, text)`` logit + ``mix`` x their
    dual-encoder cosine; ``image`` / ``text`` ``(Q, K, D)`` raw features, ``cosine`` ``(Q, K)``."""
    q, k = cosine.shape
    logits = matcher(image.reshape(q * k, -1), text.reshape(q * k, -1)).float().view(q, k)
    return logits + mix * cosine.float()


def _score_pairs(
    matcher: nn.Module, split: RetrievalSplit, img_rows: Tensor, txt_rows: Tensor, batch_size: int
) -> Tensor:
    dev = next(matcher.parameters()).device
    out = []
    for s in range(0, len(img_rows), batch_size):
        i, t = img_rows[s : s + batch_size], txt_rows[s : s + batch_size]
        out.append(matcher(split.image[i].to(dev), split.text[t].to(dev)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.inference_mode()
def mine_hard_negatives(
    dual: DualEncoder, split: RetrievalSplit, k: int = 10, chunk_size: int | None = 2048
) -> tuple[Tensor, Tensor]:
    """The ``k`` highest-scoring *wrong* captions per image ``(N, k)`` and wrong images per
    caption ``(M, k)`` under the dual encoder."""
    ie, te = encode_split(dual, split)
    n_pos = int(torch.bincount(split.text_to_image, minlength=split.n_images).max())
    k_i2t = min(k, split.n_texts - n_pos)
    k_t2i = min(k, split.n_images - 1)
    if k_i2t < 1 or k_t2i < 1:
        raise ValueError("too few images/captions to mine negatives")
    _, cand = topk_similarity(ie, te, min(split.n_texts, k_i2t + n_pos), chunk_size=chunk_size)
    wrong = split.text_to_image[cand] != torch.arange(split.n_images)[:, None]
    i2t = torch.stack([c[w][:k_i2t] for c, w in zip(cand, wrong)])
    _, cand = topk_similarity(te, ie, min(split.n_images, k_t2i + 1), chunk_size=chunk_size)
    wrong = cand != split.text_to_image[:, None]
    t2i = torch.stack([c[w][:k_t2i] for c, w in zip(cand, wrong)])
    return i2t, t2i


@dataclass
class MatcherTrainConfig:
    epochs: int = 20
    batch_size: int = 64  # positive pairs per step (each with n_negatives negatives per direction)
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_frac: float = 0.05
    n_negatives: int = 4  # negatives per positive and direction, drawn from the hard_k hardest
    hard_k: int = 10
    rerank_k: int = 10  # validation: re-rank the dual encoder's top rerank_k
    patience: int = 5
    grad_clip: float = 5.0
    chunk_size: int | None = 2048
    seed: int = 0


def train_matcher(
    matcher: MatchingModel,
    dual: DualEncoder,
    train: RetrievalSplit,
    val: RetrievalSplit | None = None,
    cfg: MatcherTrainConfig | None = None,
    log_fn: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train the matching model with the dual encoder's hard negatives (mined once on ``train``):
    per caption, a softmax over (its image, ``n_negatives`` hard wrong images) and over (the
    caption, ``n_negatives`` hard wrong captions of its image). Early stopping on the validation
    RSUM after re-ranking the dual encoder's top ``rerank_k``. ``checkpoint`` / ``resume``: as in
    :func:`fusionkit.tasks.captioning.train_captioner`."""
    cfg = cfg or MatcherTrainConfig()
    dev = next(matcher.parameters()).device
    neg_i2t, neg_t2i = mine_hard_negatives(dual, train, cfg.hard_k, cfg.chunk_size)
    n_neg = min(cfg.n_negatives, neg_i2t.shape[1], neg_t2i.shape[1])
    opt = adamw(matcher.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(train.n_texts / cfg.batch_size)
    sched = warmup_cosine(opt, steps, int(cfg.warmup_frac * steps))

    def batches(gen: torch.Generator):
        perm = torch.randperm(train.n_texts, generator=gen)
        for s in range(0, len(perm), cfg.batch_size):
            yield perm[s : s + cfg.batch_size]

    def step(t: Tensor, gen: torch.Generator) -> Step:
        b = len(t)
        img = train.text_to_image[t]
        pick_i = torch.rand(b, neg_t2i.shape[1], generator=gen).argsort(1)[:, :n_neg]
        pick_t = torch.rand(b, neg_i2t.shape[1], generator=gen).argsort(1)[:, :n_neg]
        neg_img = neg_t2i[t].gather(1, pick_i)  # (b, n) wrong images for caption t
        neg_txt = neg_i2t[img].gather(1, pick_t)  # (b, n) wrong captions for image img
        # group 1 (text -> image): (img, t), (neg_img, t); group 2 (image -> text): (img, t), (img, neg_txt)
        g1_i = torch.cat([img[:, None], neg_img], 1)
        g1_t = t[:, None].expand(-1, n_neg + 1)
        g2_i = img[:, None].expand(-1, n_neg + 1)
        g2_t = torch.cat([t[:, None], neg_txt], 1)
        ii = torch.cat([g1_i, g2_i[:, 1:]], 1).reshape(-1)
        tt = torch.cat([g1_t, g2_t[:, 1:]], 1).reshape(-1)
        logits = matcher(train.image[ii].to(dev), train.text[tt].to(dev)).view(b, 2 * n_neg + 1)
        pos = logits[:, :1]
        target = torch.zeros(b, dtype=torch.long, device=dev)
        loss = (
            F.cross_entropy(torch.cat([pos, logits[:, 1 : n_neg + 1]], 1), target)
            + F.cross_entropy(torch.cat([pos, logits[:, n_neg + 1 :]], 1), target)
        ) / 2
        return Step(loss, b)

    def evaluate() -> dict[str, float]:
        if val is None:
            return {}
        after = rerank(dual, matcher, val, k=cfg.rerank_k, chunk_size=cfg.chunk_size)["after"]
        return {f"val_{k}": v for k, v in after.items()}

    return fit(matcher, opt, sched, batches, step, evaluate, epochs=cfg.epochs, seed=cfg.seed,
               monitor=None if val is None else "val_rsum", patience=cfg.patience, grad_clip=cfg.grad_clip,
               checkpoint=checkpoint, resume=resume, log_fn=log_fn, show_progress=show_progress,
               desc="matcher epochs")  # fmt: skip


def _rerank_direction(new_scores: Tensor, is_pos: Tensor, old_ranks: Tensor) -> Tensor:
    """New best-positive ranks: order the top-k candidates by ``new_scores`` (stable, so equal
    scores keep the first-stage order); queries with no positive in the top-k keep their rank."""
    order = torch.sort(new_scores, dim=1, descending=True, stable=True).indices
    pos_sorted = is_pos.gather(1, order)
    has = pos_sorted.any(dim=1)
    first = pos_sorted.float().argmax(dim=1) + 1
    return torch.where(has, first, old_ranks)


@torch.inference_mode()
def rerank(
    dual: DualEncoder,
    matcher: nn.Module,
    split: RetrievalSplit,
    k: int = 10,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = 2048,
    mix: float = 0.0,
    batch_size: int = 4096,
) -> dict[str, Any]:
    """Metrics of the dual encoder (``"before"``) and after re-scoring its top-``k`` candidates
    in both directions with ``matcher(image_features, text_features) -> (B,) logits``
    (``"after"``); final score = matcher logit + ``mix`` x dual-encoder cosine."""
    was = matcher.training
    matcher.eval()
    ie, te = encode_split(dual, split)
    r_i2t, r_t2i = retrieval_ranks(ie, te, split.text_to_image, chunk_size=chunk_size)
    before = metrics_from_ranks(r_i2t, r_t2i, ks)
    # image -> text
    ki = min(k, split.n_texts)
    s_i, c_i = topk_similarity(ie, te, ki, chunk_size=chunk_size, backend="torch")
    img_rows = torch.arange(split.n_images)[:, None].expand(-1, ki).reshape(-1)
    new_i = _score_pairs(matcher, split, img_rows, c_i.reshape(-1), batch_size).view(-1, ki) + mix * s_i
    pos_i = split.text_to_image[c_i] == torch.arange(split.n_images)[:, None]
    new_r_i2t = _rerank_direction(new_i, pos_i, r_i2t)
    # text -> image
    kt = min(k, split.n_images)
    s_t, c_t = topk_similarity(te, ie, kt, chunk_size=chunk_size, backend="torch")
    txt_rows = torch.arange(split.n_texts)[:, None].expand(-1, kt).reshape(-1)
    new_t = _score_pairs(matcher, split, c_t.reshape(-1), txt_rows, batch_size).view(-1, kt) + mix * s_t
    pos_t = c_t == split.text_to_image[:, None]
    new_r_t2i = _rerank_direction(new_t, pos_t, r_t2i)
    matcher.train(was)
    return {"before": before, "after": metrics_from_ranks(new_r_i2t, new_r_t2i, ks), "k": k}
