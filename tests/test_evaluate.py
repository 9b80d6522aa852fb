"""fusionkit.evaluate's classification metrics against torchmetrics, whose conventions they keep."""

import pytest
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix, multiclass_f1_score

from fusionkit import evaluate


def _cases():
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        c = int(torch.randint(2, 9, (1,), generator=g))
        n = int(torch.randint(1, 200, (1,), generator=g))
        # some cases use only part of the classes, so that macro means must leave classes out
        used = int(torch.randint(1, c + 1, (1,), generator=g)) if trial % 3 == 0 else c
        labels = torch.randint(0, used, (n,), generator=g)
        logits = torch.randn(n, c, generator=g)
        if trial % 4 == 0:  # mostly right, so that per-class scores are neither 0 nor uniform
            logits[torch.arange(n), labels] += 2.0
        yield logits, labels, c


@pytest.mark.parametrize("case", list(_cases()), ids=lambda case: f"n{len(case[1])}-c{case[2]}")
def test_the_metrics_equal_torchmetrics(case):
    logits, labels, c = case
    preds = logits.argmax(1)
    got = evaluate.classification_metrics(logits, labels, c)
    assert got["accuracy"] == float(multiclass_accuracy(preds, labels, c, average="micro"))
    assert got["balanced_accuracy"] == pytest.approx(
        float(multiclass_accuracy(preds, labels, c, average="macro")), abs=1e-7
    )
    assert got["macro_f1"] == pytest.approx(float(multiclass_f1_score(preds, labels, c, average="macro")), abs=1e-7)
    assert (evaluate.confusion(logits, labels, c) == multiclass_confusion_matrix(preds, labels, c).numpy()).all()


def test_a_label_outside_the_classes_is_an_error():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        evaluate.classification_metrics(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), 3)


def test_importing_the_package_does_not_load_torchmetrics():
    import subprocess
    import sys

    code = "import sys, fusionkit.compare, fusionkit.workbook; print('torchmetrics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
