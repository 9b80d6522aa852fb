"""fusionkit.headline: what 03 hands to the report, built from the comparison, logged, read back."""

import math

import pandas as pd
import pytest

from fusionkit.compare import summarize
from fusionkit.headline import Headline
from fusionkit.report import headline as report_headline


def _results():
    rows = []
    accs = {"concat": [0.9, 0.8, 0.85], "late": [0.7, 0.72, 0.71], "unimodal:image": [0.5, 0.52, 0.5],
            "unimodal:audio": [0.6, 0.6, 0.62]}  # fmt: skip
    for m, vals in accs.items():
        for seed, v in enumerate(vals):
            rows.append({"method": m, "seed": seed, "test_accuracy": v, "val_accuracy": v, "params": 10, "train_time_s": 0.1,
                         "infer_samples_per_s": 1.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_from_comparison_takes_the_marked_best_and_the_best_single_modality():
    summary = summarize(_results())
    head = Headline.from_comparison(summary, n_methods=2, n_seeds=3)
    assert head.best_fusion_method == "concat"
    assert head.best_fusion_score == pytest.approx(0.85)
    assert head.best_unimodal == "unimodal:audio" and head.best_unimodal_score == pytest.approx((0.6 + 0.6 + 0.62) / 3)
    assert head.margin == pytest.approx(0.85 - head.best_unimodal_score)
    assert head.best_fusion_score_ci95 > 0
    s = head.as_summary()
    assert "most_robust_method" not in s and "weights_point_to_informative" not in s  # those studies did not run


def test_optional_studies_and_the_round_trip_through_the_summary():
    summary = summarize(_results())
    known = pd.DataFrame({"points_to_informative": [True, False, True]})
    robust = pd.DataFrame({"method": ["unimodal:audio", "late", "concat"], "relative_robustness": [0.99, 0.8, 0.7]})
    head = Headline.from_comparison(summary, n_methods=2, n_seeds=3, known=known, robustness_by_method=robust)
    assert head.weights_point_to_informative == "2/3"
    assert head.most_robust_method == "late"  # the unimodal baseline is not a fusion method
    assert Headline.from_summary(head.as_summary()) == head


def test_no_unimodal_baseline_means_no_margin_and_the_report_skips_the_sentence():
    summary = summarize(_results()[lambda d: ~d.method.str.startswith("unimodal:")])
    head = Headline.from_comparison(summary, n_methods=2, n_seeds=3)
    assert head.best_unimodal is None and head.margin is None
    rows = [{"step": "03_fusion_comparison", "metric": k, "value": v} for k, v in head.as_summary().items()]
    assert "margin" not in report_headline(pd.DataFrame(rows))


def test_the_report_reads_the_headline_from_the_logged_summary():
    head = Headline.from_comparison(summarize(_results()), n_methods=2, n_seeds=3)
    rows = [{"step": "03_fusion_comparison", "metric": k, "value": v} for k, v in head.as_summary().items()]
    rows += [{"step": "04_train", "metric": "method", "value": "concat"},
             {"step": "05_evaluate", "metric": "test_accuracy", "value": 0.83}]  # fmt: skip
    out = report_headline(pd.DataFrame(rows))
    assert out["best_fusion_method"] == "concat" and math.isclose(out["margin"], head.margin)
    assert out["final_method"] == "concat" and out["final_test_accuracy"] == 0.83
    assert Headline.from_summary({"best_fusion_method": "x"}) is None  # 03 did not finish


def _regression_results():
    rows = []
    mses = {"gmu": [0.10, 0.12, 0.11], "late": [0.2, 0.21, 0.19], "unimodal:image": [0.5, 0.52, 0.5],
            "unimodal:record": [0.4, 0.42, 0.41]}  # fmt: skip
    val = {"unimodal:image": 0.3, "unimodal:record": 0.6}  # validation prefers the image, test the record
    for m, vals in mses.items():
        for seed, v in enumerate(vals):
            rows.append({"method": m, "seed": seed, "test_mse": v, "test_mae": v**0.5, "test_r2": 1 - v,
                         "val_mse": val.get(m, v), "params": 10, "train_time_s": 0.1, "infer_samples_per_s": 1.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_a_regression_headline_is_in_r2_with_the_mse_and_chosen_on_validation_mse():
    head = Headline.from_comparison(summarize(_regression_results()), n_methods=2, n_seeds=3)
    assert head.regression and head.metric == "r2"
    assert head.best_fusion_method == "gmu" and head.best_fusion_score == pytest.approx(1 - 0.11)
    assert head.best_fusion_mse == pytest.approx(0.11) and head.best_fusion_mse_ci95 > 0
    assert head.best_unimodal == "unimodal:image"  # the lowest validation MSE, not the best test number
    assert head.margin == pytest.approx((1 - 0.11) - (1 - (0.5 + 0.52 + 0.5) / 3))
    s = head.as_summary()
    assert s["headline_metric"] == "r2" and "best_fusion_r2" in s and "best_fusion_accuracy" not in s
    assert Headline.from_summary(s) == head
    rows = [{"step": "03_fusion_comparison", "metric": k, "value": v} for k, v in s.items()]
    rows += [{"step": "04_train", "metric": "method", "value": "gmu"},
             {"step": "05_evaluate", "metric": "test_r2", "value": 0.9}, {"step": "05_evaluate", "metric": "test_mse", "value": 0.1}]  # fmt: skip
    out = report_headline(pd.DataFrame(rows))
    assert out["metric"] == "r2" and out["best_fusion_r2"] == pytest.approx(head.best_fusion_score)
    assert out["final_test_r2"] == 0.9 and out["final_test_mse"] == 0.1 and "final_test_accuracy" not in out
