"""Retrieval scores and ranks computed exactly in blocks: top-k similarity, per-query ranks,
Recall@K, median / mean rank and RSUM."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

Tensor = torch.Tensor


FAISS_AUTO_MIN = 50_000_000  # backend="auto" uses faiss (when importable) from N * M >= this


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
