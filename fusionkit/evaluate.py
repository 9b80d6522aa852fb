"""Test metrics, per-modality ablation and the numbers a report needs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fusionkit.model import MultimodalModel
from fusionkit.train import SplitData, predict

Tensor = torch.Tensor


#: whether a higher value of a metric is better (names without their ``val_`` / ``test_`` prefix)
HIGHER_IS_BETTER = {"accuracy": True, "balanced_accuracy": True, "macro_f1": True, "r2": True,
                    "mse": False, "mae": False, "loss": False}  # fmt: skip


def higher_is_better(metric: str) -> bool:
    """Whether a higher ``metric`` (``val_mse``, ``test_accuracy``, ``r2``, ...) is better."""
    name = metric.split("_", 1)[1] if metric.startswith(("val_", "test_", "train_")) else metric
    if name not in HIGHER_IS_BETTER:
        raise KeyError(f"metric {metric!r}: no known direction; expected one of {sorted(HIGHER_IS_BETTER)}")
    return HIGHER_IS_BETTER[name]


def regression_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """``mse``, ``mae`` and ``r2`` (1 - MSE / variance of ``target``; 0 is the mean's score) of
    predictions in the target's units (``(N,)`` or ``(N, 1)``)."""
    pred, target = pred.reshape(-1).double(), target.reshape(-1).double()
    err = pred - target
    mse = float((err**2).mean())
    var = float(((target - target.mean()) ** 2).mean())
    return {"mse": mse, "mae": float(err.abs().mean()), "r2": 1.0 - mse / var if var > 0 else float("nan")}


def target_metrics(logits: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """:func:`regression_metrics` for a regression target (float labels, ``num_classes`` 0),
    else :func:`classification_metrics`."""
    if labels.is_floating_point():
        return regression_metrics(logits, labels)
    return classification_metrics(logits, labels, num_classes)


def score(logits: Tensor, labels: Tensor) -> tuple[str, float]:
    """(name, value) of the one score the robustness and interpretability studies report:
    ``accuracy``, or ``r2`` for a regression target (float labels); higher is better in both."""
    if labels.is_floating_point():
        return "r2", regression_metrics(logits, labels)["r2"]
    return "accuracy", float((logits.argmax(1) == labels).float().mean())


def _confusion_matrix(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``(C, C)`` counts, rows the true class and columns the predicted one."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got {int(labels.min())}..{int(labels.max())}")
    flat = labels.reshape(-1).long() * num_classes + preds.reshape(-1).long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _macro(numerator: Tensor, denominator: Tensor, present: Tensor) -> float:
    """Mean over the classes that occur in labels or predictions of numerator / denominator
    (0 where the denominator is 0)."""
    per_class = torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))
    weights = present.to(per_class.dtype)
    return float((weights * per_class).sum() / weights.sum()) if bool(present.any()) else 0.0


def classification_metrics(logits: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """``accuracy`` (micro), ``balanced_accuracy`` (macro recall) and ``macro_f1``.

    Computed from the confusion matrix, with torchmetrics' conventions (a class that is neither
    a label nor a prediction is left out of the macro means; 0 / 0 counts as 0);
    tests/test_evaluate.py checks them against torchmetrics itself. Not torchmetrics here: importing
    it takes about 6 s (it loads torchvision), paid by every notebook kernel and Ray worker."""
    cm = _confusion_matrix(logits.argmax(1), labels, num_classes).to(torch.float32)
    tp = cm.diagonal()
    fn, fp = cm.sum(1) - tp, cm.sum(0) - tp
    present = (tp + fp + fn) > 0
    n = cm.sum()
    return {
        "accuracy": float(tp.sum() / n) if bool(n > 0) else 0.0,
        "balanced_accuracy": _macro(tp, tp + fn, present),
        "macro_f1": _macro(2 * tp, 2 * tp + fp + fn, present),
    }


def confusion(logits: Tensor, labels: Tensor, num_classes: int) -> np.ndarray:
    return _confusion_matrix(logits.argmax(1), labels, num_classes).numpy()


def modality_ablation(model: MultimodalModel, data: SplitData, num_classes: int) -> list[dict[str, Any]]:
    """Accuracy (a regression target: MSE, MAE, R^2) with all modalities, with each one dropped
    (mask = 0), and with only each one."""
    mods = sorted(data.features)
    n = len(data)
    rows = []

    def run(present: dict[str, bool], name: str) -> None:
        mask = {m: torch.full((n,), 1.0 if present[m] else 0.0) for m in mods}
        logits, _ = predict(model, data, mask)
        rows.append({"condition": name, **target_metrics(logits, data.labels, num_classes)})

    run({m: True for m in mods}, "all")
    for m in mods:
        run({k: k != m for k in mods}, f"drop {m}")
    if len(mods) > 2:
        for m in mods:
            run({k: k == m for k in mods}, f"only {m}")
    return rows


def quintiles(labels: Tensor) -> tuple[list[int], list[str]]:
    """Each sample's quintile of a regression target's values (0 lowest ... 4) and the names
    ``q1`` ... ``q5``: the classes the per-class views of a regression target use."""
    ranks = labels.argsort().argsort()
    return (ranks * 5 // max(1, len(labels))).tolist(), [f"q{k + 1}" for k in range(5)]


def mean_weights(weights: dict[str, Tensor] | None, labels: Tensor, class_names: list[str]) -> list[dict[str, Any]]:
    """Mean per-modality weight per class (rows: class, modality, weight); a regression target
    (float labels): per quintile of its values (:func:`quintiles`)."""
    if not weights:
        return []
    if labels.is_floating_point():
        groups, class_names = quintiles(labels)
        labels = torch.tensor(groups)
    rows = []
    for c, name in enumerate(class_names):
        sel = labels == c
        if sel.any():
            for m, w in weights.items():
                rows.append({"class": name, "modality": m, "weight": float(w[sel].mean())})
    return rows
