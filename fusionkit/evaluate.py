"""Test metrics, per-modality ablation and the numbers a report needs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix, multiclass_f1_score

from fusionkit.model import MultimodalModel
from fusionkit.train import SplitData, predict

Tensor = torch.Tensor


def classification_metrics(logits: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    preds = logits.argmax(1)
    return {
        "accuracy": float(multiclass_accuracy(preds, labels, num_classes, average="micro")),
        "balanced_accuracy": float(multiclass_accuracy(preds, labels, num_classes, average="macro")),
        "macro_f1": float(multiclass_f1_score(preds, labels, num_classes, average="macro")),
    }


def confusion(logits: Tensor, labels: Tensor, num_classes: int) -> np.ndarray:
    return multiclass_confusion_matrix(logits.argmax(1), labels, num_classes).numpy()


def modality_ablation(model: MultimodalModel, data: SplitData, num_classes: int) -> list[dict[str, Any]]:
    """Accuracy with all modalities, with each one dropped (mask = 0), and with only each one."""
    mods = sorted(data.features)
    n = len(data)
    rows = []

    def run(present: dict[str, bool], name: str) -> None:
        mask = {m: torch.full((n,), 1.0 if present[m] else 0.0) for m in mods}
        logits, _ = predict(model, data, mask)
        rows.append({"condition": name, **classification_metrics(logits, data.labels, num_classes)})

    run({m: True for m in mods}, "all")
    for m in mods:
        run({k: k != m for k in mods}, f"drop {m}")
    if len(mods) > 2:
        for m in mods:
            run({k: k == m for k in mods}, f"only {m}")
    return rows


def mean_weights(weights: dict[str, Tensor] | None, labels: Tensor, class_names: list[str]) -> list[dict[str, Any]]:
    """Mean per-modality weight per class (rows: class, modality, weight)."""
    if not weights:
        return []
    rows = []
    for c, name in enumerate(class_names):
        sel = labels == c
        if sel.any():
            for m, w in weights.items():
                rows.append({"class": name, "modality": m, "weight": float(w[sel].mean())})
    return rows
