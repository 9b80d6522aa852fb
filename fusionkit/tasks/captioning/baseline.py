"""The nearest-neighbour caption baseline (Devlin et al., 2015): the consensus caption of the most
similar training image(s)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fusionkit.tasks.captioning.metrics import consensus_scores, simple_tokenize
from fusionkit.tasks.retrieval.ranking import topk_similarity

Tensor = torch.Tensor


def nearest_neighbour_captions(
    train_features: Tensor,
    train_ids: Sequence[str],
    train_references: Mapping[str, Sequence[str]],
    query_features: Tensor,
    query_ids: Sequence[str],
    *,
    k: int = 1,
    choose: str = "consensus",
    chunk_size: int | None = 1024,
) -> dict[str, str]:
    """The nearest-neighbour caption baseline: ``{query id: caption}``.

    Neighbours by cosine similarity of the (pooled) features. ``k=1``: the nearest training
    image's consensus caption (``choose="consensus"``: highest CIDEr-D against its own other
    captions; ``"first"``: its first caption). ``k>1``: among all captions of the k nearest
    images, the one with the highest CIDEr-D against the others (Devlin et al., 2015)."""

    if choose not in ("consensus", "first"):
        raise ValueError(f"choose={choose!r}; expected 'consensus' or 'first'")
    if len(train_ids) != len(train_features) or len(query_ids) != len(query_features):
        raise ValueError("features and ids must have the same length")
    missing = [i for i in train_ids if i not in train_references or not train_references[i]]
    if missing:
        raise ValueError(f"training images without references: {missing[:5]}")
    k = min(k, len(train_ids))
    _, nn_idx = topk_similarity(query_features, train_features, k, chunk_size=chunk_size)
    if k == 1:
        if choose == "first":
            best = {i: 0 for i in train_ids}
        else:
            cons = consensus_scores({i: list(train_references[i]) for i in train_ids})
            best = {i: max(range(len(s)), key=lambda j, s=s: s[j]) for i, s in cons.items()}
        out = {}
        for q, row in zip(query_ids, nn_idx[:, 0].tolist()):
            tid = train_ids[row]
            out[q] = train_references[tid][best[tid]]
        return out
    from pycocoevalcap.cider.cider import Cider

    gts, res, owner = {}, {}, []
    for q, rows in zip(query_ids, nn_idx.tolist()):
        pool = [c for r in rows for c in train_references[train_ids[r]]]
        for j, c in enumerate(pool):
            key = len(owner)
            owner.append((q, c))
            gts[key] = [simple_tokenize(x) for n, x in enumerate(pool) if n != j]
            res[key] = [simple_tokenize(c)]
    _, scores = Cider().compute_score(gts, res)
    out, best_score = {}, {}
    for (q, c), s in zip(owner, list(scores)):
        if q not in best_score or s > best_score[q]:
            out[q], best_score[q] = c, s
    return out
