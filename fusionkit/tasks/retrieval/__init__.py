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

from fusionkit.tasks.retrieval.data import RetrievalSplit, retrieval_split
from fusionkit.tasks.retrieval.dual_encoder import (
    TEXT_HEADS,
    DualEncoder,
    RetrievalTrainConfig,
    encode_split,
    info_nce,
    train_dual_encoder,
)
from fusionkit.tasks.retrieval.ranking import metrics_from_ranks, recall_at_k, retrieval_ranks, topk_similarity
from fusionkit.tasks.retrieval.rerank import (
    MatcherTrainConfig,
    MatchingModel,
    build_matcher,
    load_matcher,
    mine_hard_negatives,
    rerank,
    rescore,
    train_matcher,
)
from fusionkit.tasks.retrieval.ridge import RidgeMap, fit_ridge

__all__ = [
    "TEXT_HEADS",
    "DualEncoder",
    "MatcherTrainConfig",
    "MatchingModel",
    "RetrievalSplit",
    "RetrievalTrainConfig",
    "RidgeMap",
    "build_matcher",
    "load_matcher",
    "rescore",
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
