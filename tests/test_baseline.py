"""The linear anchor (standardised features + logistic regression, C on validation) and late
fusion with validation-calibrated weights."""

from __future__ import annotations

import json

import torch

from fusionkit.baseline import calibrated_late, logistic_regression
from tests.synthetic import label_problem


def test_logistic_regression_reads_the_informative_modality_and_chooses_c_on_validation():
    data = label_problem(n=240, seed=4)
    audio = logistic_regression(data, "audio")
    image = logistic_regression(data, "image")
    assert 0.4 < audio["test_accuracy"] <= 0.5 + 0.1  # audio carries the tone: ceiling 1/2
    assert image["test_accuracy"] <= 1 / 3 + 0.1
    assert audio == logistic_regression(data, "audio")  # deterministic
    # permuting the test labels moves the test score only, never the choice of C
    g = torch.Generator().manual_seed(0)
    t = data["test"]
    shuffled = {**data, "test": type(t)(t.features, t.labels[torch.randperm(len(t), generator=g)], t.ids)}
    assert logistic_regression(shuffled, "audio")["C"] == audio["C"]


def test_calibrated_late_fusion_never_below_the_best_modality_on_validation():
    g = torch.Generator().manual_seed(0)
    labels = {sp: torch.randint(0, 4, (200,), generator=g) for sp in ("val", "test")}

    def noisy(y, flip):  # a modality whose prediction is right except on a fraction ``flip``
        wrong = torch.rand(len(y), generator=g) < flip
        pred = torch.where(wrong, (y + 1) % 4, y)
        return torch.nn.functional.one_hot(pred, 4).float().mul(3).log_softmax(1)

    lp = {"a": {sp: noisy(y, 0.2) for sp, y in labels.items()}, "b": {sp: noisy(y, 0.6) for sp, y in labels.items()}}
    r = calibrated_late(lp, labels)
    best_single = max(float((lp[m]["val"].argmax(1) == labels["val"]).float().mean()) for m in lp)
    assert r["val_accuracy"] >= best_single
    w = json.loads(r["weights"])
    assert set(w) == {"a", "b"} and abs(sum(w.values()) - 1) < 1e-9 and w["a"] > w["b"]
