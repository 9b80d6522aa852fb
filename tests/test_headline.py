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
