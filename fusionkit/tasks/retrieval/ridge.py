"""The closed-form ridge baseline: a linear map from image to text features, alpha picked on
validation RSUM."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fusionkit.tasks.retrieval.data import RetrievalSplit
from fusionkit.tasks.retrieval.ranking import recall_at_k

Tensor = torch.Tensor


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
