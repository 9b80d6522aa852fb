"""The two models the comparison sets beside the fusion methods that need no network training:

* :func:`logistic_regression`: the linear anchor of one modality - its pooled features
  standardised on the train split, a multinomial logistic regression (scikit-learn, lbfgs) whose
  inverse regularisation ``C`` is chosen on validation. On the ``mfcc`` encoder's features with
  ``segments`` it is the MFCC + LR audio baseline every learned audio encoder is held against.
* :func:`calibrated_late`: late fusion of trained single-modality models whose modality weights
  are chosen on validation (a grid over the simplex; the single modalities are corners of it, so
  on validation it is never below the best of them).

Both are deterministic and score test once, after every choice is made on validation.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import torch

from fusionkit.train import SplitData

__all__ = ["LR_C", "calibrated_late", "logistic_regression"]

LR_C = (0.01, 0.03, 0.1, 0.3, 1.0)


def logistic_regression(splits: dict[str, SplitData], modality: str, cs=LR_C, max_iter: int = 2000) -> dict[str, Any]:
    """Standardise ``modality``'s features (train mean / std), fit a logistic regression per ``C``
    in ``cs`` on train, keep the best on validation accuracy (ties: the smaller C); its row:
    ``val_accuracy``, ``test_accuracy``, ``C``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = {sp: d.features[modality].reshape(len(d), -1).double().numpy() for sp, d in splits.items()}
    y = {sp: d.labels.numpy() for sp, d in splits.items()}
    scaler = StandardScaler().fit(x["train"])
    z = {sp: scaler.transform(v) for sp, v in x.items()}
    best: tuple[float, float, Any] | None = None
    for c in cs:
        model = LogisticRegression(C=c, max_iter=max_iter).fit(z["train"], y["train"])
        val = float(model.score(z["val"], y["val"]))
        if best is None or val > best[0]:
            best = (val, c, model)
    assert best is not None
    val, c, model = best
    return {"val_accuracy": val, "test_accuracy": float(model.score(z["test"], y["test"])), "C": c}


def _simplex(n: int, step: float) -> list[tuple[float, ...]]:
    k = round(1 / step)
    return [tuple(i / k for i in c) + ((k - sum(c)) / k,) for c in itertools.product(range(k + 1), repeat=n - 1)
            if sum(c) <= k]  # fmt: skip


def calibrated_late(
    log_probs: dict[str, dict[str, torch.Tensor]], labels: dict[str, torch.Tensor], step: float = 0.05
) -> dict[str, Any]:
    """``log_probs``: modality -> split ("val", "test") -> (N, C) log-probabilities of that
    modality's model. The weights w (on the simplex, grid ``step``) of sum_m w_m log p_m with the
    highest validation accuracy (ties: the lower validation cross-entropy, then the first), and
    that mix's ``val_accuracy``, ``test_accuracy`` and ``weights`` (JSON)."""
    mods = sorted(log_probs)
    best: tuple[float, float, tuple[float, ...]] | None = None
    for w in _simplex(len(mods), step if len(mods) <= 3 else 0.1):
        mix = sum(wi * log_probs[m]["val"] for wi, m in zip(w, mods))
        acc = float((mix.argmax(1) == labels["val"]).float().mean())
        nll = float(torch.nn.functional.cross_entropy(mix, labels["val"]))
        if best is None or (acc, -nll) > (best[0], -best[1]):
            best = (acc, nll, w)
    assert best is not None
    acc, _, w = best
    mix = sum(wi * log_probs[m]["test"] for wi, m in zip(w, mods))
    test = float((mix.argmax(1) == labels["test"]).float().mean())
    return {"val_accuracy": acc, "test_accuracy": test,
            "weights": json.dumps({m: round(float(wi), 4) for m, wi in zip(mods, w)}, sort_keys=True)}  # fmt: skip
