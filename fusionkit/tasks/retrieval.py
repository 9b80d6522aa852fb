"""Cross-modal retrieval on cached features: metrics, a CLIP-style dual encoder, the ridge
baseline, and re-ranking by a fusion model.

Metrics (:func:`recall_at_k`)
    Image -> text: an image's rank is that of its best-ranked caption (any of its ~5 references
    counts as a hit); text -> image: the rank of the caption's single image. Recall@K (fraction
    of queries with rank <= K), median rank (VSE++'s ``floor(median(rank - 1)) + 1``) and mean
    rank (1-based), RSUM (the six recalls summed, in percent, as VSE++ reports it). Ties are broken by index: among equal scores the item with the
    lower index ranks first - exactly a stable descending sort of the full score row.
    Ranks are computed exactly in blocks of ``chunk_size`` x ``chunk_size`` scores: memory
    O(chunk_size^2 + N + M), never the full N x M matrix (``chunk_size=None``: one block).
    :func:`topk_similarity` (exact top-k in blocks, memory O(N k + chunk_size^2), same tie rule)
    serves re-ranking and nearest neighbours; faiss (``IndexFlatIP``) is used instead only when
    ``backend="faiss"``, or ``"auto"`` on a large problem, and only when faiss is importable
    (faiss orders ties its own way).

Dual encoder (:class:`DualEncoder`, :func:`train_dual_encoder`)
    A projection head per modality ([Dropout ->] LayerNorm -> Linear [-> GELU -> Dropout ->
    Linear]; or no head on the text side, ``text_head="identity"``) onto a shared L2-normalised space; symmetric InfoNCE (CLIP) with a learnable temperature initialised
    at 0.07 (``logit_scale = log(1/0.07)``) and clamped to ``logit_scale <= log(100)``. Several
    captions of one image in a batch are not treated as negatives of each other. AdamW, linear
    warm-up + cosine decay, early stopping on validation RSUM, best state restored. Encoders stay
    frozen: it trains on feature tensors.

Ridge baseline (:class:`RidgeMap`, :func:`fit_ridge`)
    A closed-form linear map (with intercept) from image features to text features, fitted on
    every (image, caption) pair; alpha picked on validation RSUM; retrieval by cosine between the
    mapped image and the captions.

Re-ranking (:class:`MatchingModel`, :func:`train_matcher`, :func:`rerank`)
    An image-text matching model - any registered fusion method on the (image, text) pair, then
    an MLP to one logit - re-scores the dual encoder's top-k candidates. It is trained with hard
    negatives: for each pair, the highest-scoring wrong captions (image -> text) and wrong images
    (text -> image) under the dual encoder, with a listwise softmax loss over (positive,
    negatives). :func:`rerank` reports the metrics before and after re-ranking; candidates outside
    the top-k keep their rank.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fusionkit.data.problems import check_on_error
from fusionkit.training import Step, TrainResult, fit, warmup_cosine

Tensor = torch.Tensor

__all__ = [
    "DualEncoder",
    "MatcherTrainConfig",
    "MatchingModel",
    "RetrievalSplit",
    "RetrievalTrainConfig",
    "RidgeMap",
    "build_matcher",
    "encode_split",
    "fit_ridge",
    "info_nce",
    "metrics_from_ranks",
    "mine_hard_negatives",
    "recall_at_k",
    "rerank",
    "retrieval_ranks",
    "retrieval_split",
    "topk_similarity",
    "train_dual_encoder",
    "train_matcher",
]

FAISS_AUTO_MIN = 50_000_000  # backend="auto" uses faiss (when importable) from N * M >= this


# ============================================================================== scores and ranks
def _block_scores(q: Tensor, k: Tensor) -> Tensor:
    """One block of scores (the only place scores are computed; tests instrument it)."""
    return q @ k.T


def _prep(x: Tensor, normalize: bool) -> Tensor:
    if x.dim() == 3:
        x = x.mean(dim=1)
    if x.dim() != 2:
        raise ValueError(f"embeddings must be (N, D) (or (N, L, D), mean-pooled); got {tuple(x.shape)}")
    x = x.float() if x.dtype not in (torch.float32, torch.float64) else x
    if not torch.isfinite(x).all():
        raise ValueError("embeddings have NaN/inf values")
    return F.normalize(x, dim=-1) if normalize else x


def _faiss():
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return None
    return faiss


def topk_similarity(
    queries: Tensor,
    keys: Tensor,
    k: int,
    *,
    chunk_size: int | None = 1024,
    normalize: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` keys per query by dot product (cosine with ``normalize=True``):
    ``(scores (N, k), indices (N, k))``, best first, equal scores ordered by key index.

    Computed in ``chunk_size`` x ``chunk_size`` blocks with a running top-k (memory O(N k +
    chunk_size^2)); ``backend="faiss"`` (or ``"auto"`` with N M >= ``FAISS_AUTO_MIN``) uses a
    faiss ``IndexFlatIP`` when faiss is importable."""
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend={backend!r}; expected 'auto', 'torch' or 'faiss'")
    q, kk = _prep(queries, normalize), _prep(keys, normalize)
    if q.shape[1] != kk.shape[1]:
        raise ValueError(f"queries have dim {q.shape[1]}, keys {kk.shape[1]}")
    n, m = len(q), len(kk)
    k = min(int(k), m)
    if k < 1:
        raise ValueError("k must be >= 1 and there must be keys")
    faiss = _faiss() if backend in ("auto", "faiss") else None
    if backend == "faiss" and faiss is None:
        raise ImportError("backend='faiss' but faiss is not installed; use backend='torch'")
    if faiss is not None and (backend == "faiss" or n * m >= FAISS_AUTO_MIN):
        index = faiss.IndexFlatIP(q.shape[1])
        index.add(kk.float().contiguous().numpy())
        d, i = index.search(q.float().contiguous().numpy(), k)
        return torch.from_numpy(d).to(q.dtype), torch.from_numpy(i).long()
    cq = chunk_size or n
    ck = chunk_size or m
    out_s, out_i = [], []
    for a in range(0, n, cq):
        qa = q[a : a + cq]
        best_s = qa.new_empty(len(qa), 0)
        best_i = torch.empty(len(qa), 0, dtype=torch.long)
        for b in range(0, m, ck):
            s = _block_scores(qa, kk[b : b + ck])
            idx = torch.arange(b, b + s.shape[1]).expand(len(qa), -1)
            # running top-k first, then this block: both in increasing index order among equal
            # scores, so a stable descending sort keeps lower indices first
            cs = torch.cat([best_s, s], dim=1)
            ci = torch.cat([best_i, idx], dim=1)
            order = torch.sort(cs, dim=1, descending=True, stable=True).indices[:, :k]
            best_s, best_i = cs.gather(1, order), ci.gather(1, order)
        out_s.append(best_s)
        out_i.append(best_i)
    return torch.cat(out_s), torch.cat(out_i)


def _positives_table(rows: Tensor, n_queries: int) -> Tensor:
    """``rows[j]`` = query of key j -> ``(n_queries, P)`` key indices per query, padded with -1."""
    counts = torch.bincount(rows, minlength=n_queries)
    p = int(counts.max()) if len(rows) else 0
    table = torch.full((n_queries, max(p, 1)), -1, dtype=torch.long)
    order = torch.argsort(rows, stable=True)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(rows)) - start[rows[order]]
    table[rows[order], slot] = order
    return table


def _best_positive(ps: Tensor, pa: Tensor) -> tuple[Tensor, Tensor]:
    """Per query, the positive that ranks best - the highest score, then the lowest index - as
    (score, index); its rank is the minimum over all the query's positives. (score -inf, index
    -1) where a query has none."""
    valid = pa >= 0
    ps = torch.where(valid, ps, torch.full_like(ps, -math.inf))
    top = ps.max(dim=1, keepdim=True).values
    big = torch.iinfo(torch.long).max
    idx = torch.where(valid & (ps == top), pa, torch.full_like(pa, big)).min(dim=1).values
    return top.squeeze(1), torch.where(idx == big, torch.full_like(idx, -1), idx)


def _ranks(q: Tensor, keys: Tensor, pos: Tensor, chunk_size: int | None) -> Tensor:
    """1-based rank of each query's best positive (``pos`` ``(N, P)`` key indices, -1 padding):
    ``1 + #{keys scoring higher} + #{lower-index keys scoring equal}``, computed in blocks."""
    n, m = len(q), len(keys)
    cq, ck = chunk_size or n, chunk_size or m
    best = torch.full((n,), m + 1, dtype=torch.long)
    for a in range(0, n, cq):
        qa = q[a : a + cq]
        pa = pos[a : a + cq]  # (c, P)
        valid = pa >= 0
        # pass 1: the positives' scores, from the same blocks pass 2 compares against
        ps = qa.new_full(pa.shape, math.nan)
        for b in range(0, m, ck):
            inb = valid & (pa >= b) & (pa < b + ck)
            if not inb.any():
                continue
            s = _block_scores(qa, keys[b : b + ck])
            r, c = inb.nonzero(as_tuple=True)
            ps[r, c] = s[r, pa[r, c] - b]
        bs, bi = _best_positive(ps, pa)
        # pass 2: count the keys ranked above the best positive
        above = torch.zeros(len(qa), dtype=torch.long)
        for b in range(0, m, ck):
            s = _block_scores(qa, keys[b : b + ck])  # (c, k)
            idx = torch.arange(b, b + s.shape[1])
            above += ((s > bs[:, None]) | ((s == bs[:, None]) & (idx[None, :] < bi[:, None]))).sum(dim=1)
        best[a : a + cq] = torch.where(bi >= 0, above + 1, torch.full_like(above, m + 1))
    return best


def _check_mapping(text_to_image: Tensor | Sequence[int], n_images: int, n_texts: int) -> Tensor:
    t2i = torch.as_tensor(text_to_image, dtype=torch.long)
    if t2i.shape != (n_texts,):
        raise ValueError(f"text_to_image must have one image row per text ({n_texts}); got shape {tuple(t2i.shape)}")
    if n_texts and (int(t2i.min()) < 0 or int(t2i.max()) >= n_images):
        raise ValueError(f"text_to_image has rows outside [0, {n_images})")
    empty = (torch.bincount(t2i, minlength=n_images) == 0).nonzero().flatten()
    if len(empty):
        raise ValueError(f"images {empty[:10].tolist()} have no text: image->text ranks are undefined for them")
    return t2i


def retrieval_ranks(
    image: Tensor,
    text: Tensor,
    text_to_image: Tensor | Sequence[int],
    *,
    chunk_size: int | None = 1024,
    normalize: bool = True,
) -> tuple[Tensor, Tensor]:
    """(image->text ranks ``(N,)``, text->image ranks ``(M,)``), 1-based, ties by index (see the
    module docstring). ``text_to_image[j]``: the image row of text ``j``."""
    img, txt = _prep(image, normalize), _prep(text, normalize)
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image embeddings have dim {img.shape[1]}, text {txt.shape[1]}")
    t2i = _check_mapping(text_to_image, len(img), len(txt))
    i2t_ranks = _ranks(img, txt, _positives_table(t2i, len(img)), chunk_size)
    t2i_ranks = _ranks(txt, img, t2i[:, None], chunk_size)
    return i2t_ranks, t2i_ranks


def _ranks_from_sim(sim: Tensor, text_to_image: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
    n, m = sim.shape
    t2i = _check_mapping(text_to_image, n, m)
    sim = sim.float() if sim.dtype not in (torch.float32, torch.float64) else sim
    i2t_ranks = _ranks_scores(sim, _positives_table(t2i, n))
    t2i_ranks = _ranks_scores(sim.T, t2i[:, None])
    return i2t_ranks, t2i_ranks


def _ranks_scores(s: Tensor, pa: Tensor) -> Tensor:
    bs, bi = _best_positive(s.gather(1, pa.clamp(min=0)), pa)
    idx = torch.arange(s.shape[1])
    above = ((s > bs[:, None]) | ((s == bs[:, None]) & (idx[None, :] < bi[:, None]))).sum(dim=1)
    return torch.where(bi >= 0, above + 1, torch.full_like(above, s.shape[1] + 1))


def metrics_from_ranks(i2t_ranks: Tensor, t2i_ranks: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``i2t_R@K``, ``t2i_R@K`` (fractions), ``*_medr``, ``*_meanr``, ``rsum`` (the recalls in
    percent, summed)."""
    out: dict[str, float] = {}
    rsum = 0.0
    for name, r in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        r = r.double()
        for k in ks:
            v = float((r <= k).double().mean())
            out[f"{name}_R@{k}"] = v
            rsum += 100 * v
        # VSE++ / SCAN: floor(median(0-based ranks)) + 1
        out[f"{name}_medr"] = math.floor(float(np.median((r - 1).numpy()))) + 1.0 if len(r) else math.nan
        out[f"{name}_meanr"] = float(r.mean())
    out["rsum"] = rsum
    return out


def recall_at_k(
    scores: Tensor | tuple[Tensor, Tensor],
    text_to_image: Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    *,
    chunk_size: int | None = 1024,
    normalize: bool = True,
) -> dict[str, float]:
    """Retrieval metrics both directions (see :func:`metrics_from_ranks` for the keys).

    ``scores``: a similarity matrix ``(N images, M texts)``, or ``(image_emb (N, D), text_emb
    (M, D))`` - compared by cosine (``normalize=True``) or dot product, in blocks of
    ``chunk_size`` (never the full matrix when it is set). ``text_to_image[j]``: the image row
    of text ``j`` (every image needs at least one text)."""
    if isinstance(scores, tuple):
        r1, r2 = retrieval_ranks(scores[0], scores[1], text_to_image, chunk_size=chunk_size, normalize=normalize)
    else:
        if scores.dim() != 2:
            raise ValueError(f"a similarity matrix must be (N, M); got {tuple(scores.shape)}")
        r1, r2 = _ranks_from_sim(scores, text_to_image)
    return metrics_from_ranks(r1, r2, ks)


# ============================================================================== data
@dataclass
class RetrievalSplit:
    """``image`` ``(N, Di)``, ``text`` ``(M, Dt)`` (one row per caption), ``text_to_image``
    ``(M,)`` the image row of each caption, ``image_ids`` (optional)."""

    image: Tensor
    text: Tensor
    text_to_image: Tensor
    image_ids: list[str] | None = None

    def __post_init__(self) -> None:
        self.text_to_image = _check_mapping(self.text_to_image, len(self.image), len(self.text))
        if self.image_ids is not None and len(self.image_ids) != len(self.image):
            raise ValueError("image_ids must have one id per image row")
        for name, x in (("image", self.image), ("text", self.text)):
            if not torch.isfinite(x).all():
                bad = (~torch.isfinite(x.reshape(len(x), -1))).any(1).nonzero().flatten()[:5].tolist()
                raise ValueError(f"{name} features have NaN/inf values (rows {bad})")

    @property
    def n_images(self) -> int:
        return len(self.image)

    @property
    def n_texts(self) -> int:
        return len(self.text)


def retrieval_split(
    dataset,
    split: str,
    feature_ids: Sequence[str],
    image_features: Tensor,
    text_features: Tensor,
    on_error: str = "raise",
) -> RetrievalSplit:
    """Join a :class:`~fusionkit.tasks.captioning.CaptionDataset` split with image features
    (rows = ``feature_ids``) and caption features (rows in the order of
    ``dataset.pairs(split)``, i.e. what the text encoder was given). Images without features are
    an error, or dropped with their captions (``on_error="skip"``, noted in ``dataset.report``)."""
    check_on_error(on_error)
    img_of_caption, captions, _ = dataset.pairs(split)
    if len(text_features) != len(captions):
        raise ValueError(
            f"text_features has {len(text_features)} rows; dataset.pairs({split!r}) has {len(captions)} captions"
        )
    ids, rows = dataset.feature_rows(feature_ids, split, on_error=on_error)
    row_of = {i: r for r, i in enumerate(ids)}
    keep = [j for j, i in enumerate(img_of_caption) if i in row_of]
    t2i = torch.as_tensor([row_of[img_of_caption[j]] for j in keep], dtype=torch.long)
    return RetrievalSplit(image_features[rows].float(), text_features[keep].float(), t2i, ids)


# ============================================================================== dual encoder
TEXT_HEADS = ("project", "identity")


def _head(in_dim: int, out_dim: int, hidden: int | None, dropout: float, input_dropout: float = 0.0) -> nn.Module:
    pre: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout else []
    if not hidden:
        return nn.Sequential(*pre, nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))
    return nn.Sequential(
        *pre,
        nn.LayerNorm(in_dim),
        nn.Linear(in_dim, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, out_dim),
    )


class DualEncoder(nn.Module):
    """Projection heads for image and text features onto one L2-normalised space, and a
    learnable temperature (``logit_scale``, CLIP's parametrisation).

    ``hidden``: width of the heads' hidden layer (``None``/0: linear heads). ``input_dropout``:
    dropout on the input features of both heads (feature-level augmentation; on a few hundred
    training images it is what keeps InfoNCE from overfitting in a couple of epochs).
    ``text_head="identity"``: the text features are used as they are (L2-normalised) and only
    the image head learns, mapping images into the text encoder's space (``embed_dim`` becomes
    the text dimension) - the locked-tower recipe of LiT, here with the text tower locked."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        embed_dim: int = 256,
        hidden: int | None = 512,
        dropout: float = 0.1,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learn_temperature: bool = True,
        input_dropout: float = 0.0,
        text_head: str = "project",
    ):
        super().__init__()
        if text_head not in TEXT_HEADS:
            raise ValueError(f"text_head={text_head!r}; expected one of {TEXT_HEADS}")
        if not 0.0 <= input_dropout < 1.0:
            raise ValueError(f"input_dropout={input_dropout!r}; expected a value in [0, 1)")
        if text_head == "identity":
            embed_dim = text_dim
        self.image_head = _head(image_dim, embed_dim, hidden, dropout, input_dropout)
        self.text_head = (
            nn.Identity() if text_head == "identity" else _head(text_dim, embed_dim, hidden, dropout, input_dropout)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)), requires_grad=learn_temperature)
        self.max_log_scale = math.log(max_logit_scale)
        self.embed_dim = embed_dim

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(0.0, self.max_log_scale).exp()

    def clamp_(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, self.max_log_scale)

    def encode_image(self, x: Tensor) -> Tensor:
        return F.normalize(self.image_head(x.mean(1) if x.dim() == 3 else x), dim=-1)

    def encode_text(self, x: Tensor) -> Tensor:
        return F.normalize(self.text_head(x.mean(1) if x.dim() == 3 else x), dim=-1)

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_image(image), self.encode_text(text)


def info_nce(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, image_rows: Tensor | None = None
) -> Tensor:
    """Symmetric InfoNCE: ``(CE(s I T^T, diag) + CE(s T I^T, diag)) / 2``. With ``image_rows``
    (the image of each pair), other pairs of the same image are left out of the negatives."""
    logits = logit_scale * image_emb @ text_emb.T
    target = torch.arange(len(logits), device=logits.device)
    if image_rows is not None:
        same = image_rows[:, None] == image_rows[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, -math.inf)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.inference_mode()
def encode_split(model: DualEncoder, split: RetrievalSplit, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """(image embeddings, text embeddings) of a split."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    img = torch.cat(
        [
            model.encode_image(split.image[s : s + batch_size].to(dev)).cpu()
            for s in range(0, split.n_images, batch_size)
        ]
    )
    txt = torch.cat(
        [model.encode_text(split.text[s : s + batch_size].to(dev)).cpu() for s in range(0, split.n_texts, batch_size)]
    )
    model.train(was)
    return img, txt


@dataclass
class RetrievalTrainConfig:
    epochs: int = 100
    batch_size: int = 512
    lr: float = 3e-4
    weight_decay: float = 1e-2
    warmup_frac: float = 0.05
    grad_clip: float = 5.0
    patience: int = 8  # epochs without a better validation RSUM before stopping
    chunk_size: int | None = 2048  # block size of the validation rank computation
    seed: int = 0


def train_dual_encoder(
    model: DualEncoder,
    train: RetrievalSplit,
    val: RetrievalSplit | None,
    cfg: RetrievalTrainConfig | None = None,
    log_fn: Callable[[dict[str, float]], None] | None = None,
    show_progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrainResult:
    """Every (image, caption) pair once per epoch, shuffled; symmetric InfoNCE; validation RSUM
    after each epoch, early stopping on it, best state restored (no ``val``: last state).
    ``checkpoint`` / ``resume``: as in :func:`fusionkit.tasks.captioning.train_captioner`."""
    cfg = cfg or RetrievalTrainConfig()
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    steps = cfg.epochs * math.ceil(train.n_texts / cfg.batch_size)
    sched = warmup_cosine(opt, steps, int(cfg.warmup_frac * steps))

    def batches(gen: torch.Generator):
        perm = torch.randperm(train.n_texts, generator=gen)
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            if len(idx) >= 2:  # InfoNCE needs a negative
                yield idx

    def step(idx: Tensor, gen: torch.Generator) -> Step:
        rows = train.text_to_image[idx]
        img, txt = model(train.image[rows].to(dev), train.text[idx].to(dev))
        return Step(info_nce(img, txt, model.scale(), rows.to(dev)), len(idx))

    def evaluate() -> dict[str, float]:
        rec = {"temperature": float(1 / model.scale().detach())}
        if val is not None:
            ie, te = encode_split(model, val)
            m = recall_at_k((ie, te), val.text_to_image, chunk_size=cfg.chunk_size)
            rec.update({f"val_{k}": v for k, v in m.items()})
        return rec

    return fit(model, opt, sched, batches, step, evaluate, epochs=cfg.epochs, seed=cfg.seed,
               monitor=None if val is None else "val_rsum", patience=cfg.patience, grad_clip=cfg.grad_clip,
               after_step=model.clamp_, checkpoint=checkpoint, resume=resume, log_fn=log_fn,
               show_progress=show_progress, desc="dual encoder epochs")  # fmt: skip


# ============================================================================== ridge baseline
class RidgeMap:
    """Closed-form ridge regression ``Y ~ X W + b`` (features centred, ``alpha`` on W only),
    solved in float64 with ``torch.linalg.solve``."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        self.x_mean: Tensor | None = None

    def fit(self, x: Tensor, y: Tensor) -> RidgeMap:
        x, y = x.double(), y.double()
        self.x_mean, y_mean = x.mean(0), y.mean(0)
        xc, yc = x - self.x_mean, y - y_mean
        gram = xc.T @ xc + self.alpha * torch.eye(x.shape[1], dtype=torch.float64)
        self.weight = torch.linalg.solve(gram, xc.T @ yc)
        self.bias = y_mean
        return self

    def transform(self, x: Tensor) -> Tensor:
        if self.weight is None:
            raise RuntimeError("RidgeMap: call fit first")
        return ((x.double() - self.x_mean) @ self.weight + self.bias).float()

    def fit_split(self, split: RetrievalSplit) -> RidgeMap:
        """Fit on every (image, caption) pair of ``split``."""
        return self.fit(split.image[split.text_to_image], split.text)

    def embeddings(self, split: RetrievalSplit) -> tuple[Tensor, Tensor]:
        """(mapped images, captions): compare them by cosine, e.g. with :func:`recall_at_k`."""
        return self.transform(split.image), split.text.float()


def fit_ridge(
    train: RetrievalSplit,
    val: RetrievalSplit | None = None,
    alphas: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0),
    chunk_size: int | None = 2048,
) -> tuple[RidgeMap, dict[float, float]]:
    """Fit the ridge map for every alpha and keep the one with the best validation RSUM
    (no ``val``: the first alpha). Returns (map, {alpha: validation RSUM})."""
    if val is None:
        return RidgeMap(alphas[0]).fit_split(train), {}
    scores: dict[float, float] = {}
    best: RidgeMap | None = None
    for a in alphas:
        r = RidgeMap(a).fit_split(train)
        scores[a] = recall_at_k(r.embeddings(val), val.text_to_image, chunk_size=chunk_size)["rsum"]
        if best is None or scores[a] > scores[best.alpha]:
            best = r
    assert best is not None
    return best, scores


# ============================================================================== re-ranking
class MatchingModel(nn.Module):
    """Image-text matching: a fusion method (by registry name) on ``{"image", "text"}`` and an
    MLP head to one logit per pair (``fusionkit.model.build_model`` with one output)."""

    def __init__(
        self, method: str, image_dim: int, text_dim: int, hidden: int = 128, dropout: float = 0.1, **fusion_hparams: Any
    ):
        super().__init__()
        from fusionkit.model import build_model

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
    opt = torch.optim.AdamW(matcher.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
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
