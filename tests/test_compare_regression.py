"""The comparison on a regression target: MSE / MAE / R^2 with CIs, the paired tests, and every
choice made on validation in the right direction (lower MSE is better)."""

import pandas as pd
import pytest
import torch

from fusionkit.compare import across_targets, run, summarize
from fusionkit.fusion import available
from fusionkit.grid import SerialExecutor, search
from fusionkit.grid.jobs import run_one
from fusionkit.train import SplitData, TrainConfig, predict
from tests.synthetic import label_problem, regression_ceilings, regression_problem

CFG = TrainConfig(epochs=25, batch_size=64, patience=8)


@pytest.fixture(scope="module")
def comparison():
    return run(["concat", "late"], regression_problem(), CFG, 0, seeds=[0, 1, 2], hidden=32, show_progress=False)


def test_each_modality_alone_and_fused_reach_their_r2_ceilings(comparison):
    s = comparison.summary.set_index("method")
    ceil = regression_ceilings()
    for m in ("image", "audio"):
        assert s.loc[f"unimodal:{m}", "test_r2_mean"] == pytest.approx(ceil[m], abs=0.07)
    for m in ("concat", "late"):  # the target is additive: late fusion reaches the joint ceiling too
        assert s.loc[m, "test_r2_mean"] == pytest.approx(ceil["fused"], abs=0.06)
    assert {"test_mse_ci95", "test_mae_mean", "test_r2_ci95", "val_mse_mean"} <= set(s.columns)
    assert "test_accuracy_mean" not in s.columns
    # the unimodal baselines are significantly worse (higher MSE) than the best fusion method
    assert s.loc["unimodal:image", "worse_than_best"] and s.loc["unimodal:audio", "worse_than_best"]
    # rows best first: ascending MSE
    assert comparison.summary["test_mse_mean"].is_monotonic_increasing


def test_the_best_is_the_lowest_validation_mse_not_the_highest():
    rows = []
    for m, val, test in (("a", 1.0, 3.0), ("b", 2.0, 1.0), ("unimodal:x", 0.5, 0.5)):
        for seed in range(3):
            rows.append({"method": m, "seed": seed, "val_mse": val, "test_mse": test + 0.01 * seed, "test_r2": 0.5,
                         "params": 1, "train_time_s": 0.0, "infer_samples_per_s": 1.0})  # fmt: skip
    s = summarize(pd.DataFrame(rows)).set_index("method")
    assert s.is_best["a"] and not s.is_best["b"]  # b wins on test, a (lower) on validation
    assert list(s.index) == ["unimodal:x", "b", "a"]  # sorted by test MSE, lowest first
    assert s.loc["b", "p_vs_best"] < 0.05 and not s.loc["b", "worse_than_best"]  # b is better, not worse


def test_predictions_are_in_the_targets_units_and_the_scale_is_the_training_splits():
    data = regression_problem(n=300, seed=1)
    model, row, _ = run_one("concat", data, TrainConfig(epochs=15, batch_size=64), 0, hidden=32)
    y = data["train"].labels
    assert float(model.head.mean) == pytest.approx(float(y.mean()), rel=1e-6)
    assert float(model.head.std) == pytest.approx(float(y.std(unbiased=False)), rel=1e-5)
    pred, _ = predict(model, data["test"])
    assert pred.shape == (len(data["test"]), 1)
    assert float(pred.mean()) == pytest.approx(5.0, abs=0.5)  # the target's mean, not 0 (standardised)
    assert row["test_mse"] == pytest.approx(float(((pred[:, 0] - data["test"].labels) ** 2).mean()), rel=1e-4)
    assert row["val_mse"] > 0 and "val_accuracy" not in row


def test_the_search_minimises_the_validation_mse():
    data = regression_problem(n=200, seed=2)
    with SerialExecutor(show_progress=False) as ex:
        res = search(["concat"], {"main": (data, 0)}, TrainConfig(epochs=4, batch_size=32), executor=ex, hidden=16,
                     dropout=0.1, trials=3, metric="val_mse")  # fmt: skip
    t = res.trials
    assert t.val_mse.nunique() == 3
    assert t[t.is_best].val_mse.iloc[0] == t.val_mse.min()


def test_a_regression_and_a_class_target_side_by_side():
    reg = regression_problem(n=200, seed=3)
    cls = label_problem(n=200, seed=3)
    cls = {k: SplitData(v.features, v.labels, v.ids) for k, v in cls.items()}
    res = across_targets(["late"], {"score": (reg, 0), "label": (cls, 6)}, TrainConfig(epochs=4, batch_size=32),
                         seeds=[0, 1], hidden=16, show_progress=False)  # fmt: skip
    v = res.verdicts().set_index("target")
    assert v.loc["score", "best_mse"] > 0 and v.loc["label", "best_accuracy"] > 0
    assert pd.isna(v.loc["score", "best_accuracy"]) and pd.isna(v.loc["label", "best_mse"])


def test_labels_and_num_classes_must_agree():
    data = regression_problem(n=60)
    with pytest.raises(ValueError, match="regression targets"):
        run_one("concat", data, TrainConfig(epochs=1), 3, hidden=8)
    bad = {**data, "train": SplitData(data["train"].features, data["train"].labels * 0 + 1.0, data["train"].ids)}
    with pytest.raises(ValueError, match="regression target is constant"):
        run_one("concat", bad, TrainConfig(epochs=1), 0, hidden=8)
    nan = data["train"].labels.clone()
    nan[3] = float("nan")
    bad = {**data, "train": SplitData(data["train"].features, nan, data["train"].ids)}
    with pytest.raises(ValueError, match=r"NaN/inf regression targets \(samples \['train3'\]\)"):
        run_one("concat", bad, TrainConfig(epochs=1), 0, hidden=8)
    assert torch.is_floating_point(data["test"].labels)


@pytest.mark.parametrize("method", available())
def test_every_fusion_method_trains_a_regression_head(method):
    data = regression_problem(n=64, seed=5, dim=6)
    model, row, res = run_one(method, data, TrainConfig(epochs=2, batch_size=32), 0, hidden=8)
    assert model.regression and res.monitor == "val_mse"
    pred, _ = predict(model, data["val"])
    assert pred.shape == (len(data["val"]), 1) and torch.isfinite(pred).all()
    assert {"test_mse", "test_mae", "test_r2", "val_mse"} <= set(row)


def test_a_class_metric_cannot_search_a_regression_target():
    with pytest.raises(ValueError, match=r"search_metric 'val_accuracy': a regression target is searched on 'val_mse'"):
        run(["concat"], regression_problem(n=40), CFG, 0, seeds=[0], search_trials=1, search_metric="val_accuracy",
            show_progress=False)  # fmt: skip
