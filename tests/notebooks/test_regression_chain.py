"""The notebook chain on a regression target (shapes' ``score``) with the tabular ``record``
(``configs/profiles/regression.yaml`` at its smallest): 03's headline in R^2 and MSE, 04's
regression head, 05's MSE / MAE / R^2 in the target's units with a predicted-vs-true plot, 06's
report against the documented R^2 ceilings."""

import json

import pandas as pd
import pytest

from fusionkit.bundle import load_classifier
from fusionkit.data.base import load_dataset
from fusionkit.data.shapes_scene import SCORE, TABULAR


def _summary(run_dir):
    s = pd.read_csv(run_dir / "summary.csv")
    return {(r.step, r.metric): r.value for r in s.itertuples()}


def _steps(run_dir, kind):
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["data"] for r in recs if r["kind"] == kind}


def test_the_chain_completes_on_the_regression_target_with_the_record(regression_run):
    run_dir, shapes_dir = regression_run
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "complete", state
    ds = load_dataset(shapes_dir)
    assert ds.modalities[TABULAR] == "tabular" and ds.targets[SCORE] == []
    data = _steps(run_dir, "summary")["01_data_prep"]
    assert data["ceilings"] == ds.info["r2_ceilings"][SCORE] and data["ceilings"]["fused"] > data["ceilings"][TABULAR]


def test_the_comparison_and_its_headline_are_in_r2_and_mse(regression_run):
    run_dir, _ = regression_run
    m = _summary(run_dir)
    comp = pd.read_csv(run_dir / "tables" / "comparison_summary.csv").set_index("method")
    assert {"test_mse_mean", "test_mae_mean", "test_r2_mean", "val_mse_mean"} <= set(comp.columns)
    assert "test_accuracy_mean" not in comp
    best = m[("03_fusion_comparison", "best_fusion_method")]
    assert bool(comp.loc[best, "is_best"]) and best in ("late", "gmu")
    assert comp.loc[best, "val_mse_mean"] == comp.loc[["late", "gmu"], "val_mse_mean"].min()  # lower is better
    assert float(m[("03_fusion_comparison", "best_fusion_r2")]) == pytest.approx(comp.loc[best, "test_r2_mean"])
    assert float(m[("03_fusion_comparison", "best_fusion_mse")]) == pytest.approx(comp.loc[best, "test_mse_mean"])
    assert m[("03_fusion_comparison", "headline_metric")] == "r2"
    uni = comp[comp.kind == "unimodal"]
    assert m[("03_fusion_comparison", "best_unimodal")] == uni["val_mse_mean"].idxmin()
    # robustness and interpretability in R^2
    missing = pd.read_csv(run_dir / "tables" / "missing_modality.csv")
    assert "r2" in missing and "accuracy" not in missing and TABULAR in set(missing["dropped"])
    assert "r2" in pd.read_csv(run_dir / "tables" / "noise_curves.csv")
    importance = pd.read_csv(run_dir / "tables" / "drop_importance.csv")
    assert TABULAR in set(importance["modality"])


def test_04_trains_a_regression_head_and_05_reports_in_the_targets_units(regression_run):
    run_dir, shapes_dir = regression_run
    m = _summary(run_dir)
    model, spec = load_classifier(run_dir / "model.safetensors")
    assert spec.regression and spec.target == SCORE and spec.fusion == m[("04_train", "method")]
    assert ("04_train", "best_val_mse") in m and ("04_train", "best_val_accuracy") not in m
    mse, mae, r2 = (float(m[("05_evaluate", f"test_{k}")]) for k in ("mse", "mae", "r2"))
    assert 0 < mae <= mse**0.5 + 1e-9 and r2 == pytest.approx(float(m[("05_evaluate", "ablation/all")]))
    test_scores = [s.targets[SCORE] for s in load_dataset(shapes_dir).split("test")]
    var = float(pd.Series(test_scores).var(ddof=0))
    assert r2 == pytest.approx(1 - mse / var, abs=1e-6)  # R^2 and MSE of the same predictions, in the target's units
    preds = pd.read_csv(run_dir / "tables" / "predictions.csv")
    assert {"truth", "prediction", "error"} <= set(preds.columns) and "confidence" not in preds
    assert all(min(abs(t - v) for v in test_scores) < 1e-3 for t in preds["truth"])  # the true values, unscaled
    assert (run_dir / "figures" / "predicted_vs_true.png").exists()
    assert not (run_dir / "figures" / "confusion_matrix.png").exists()


def test_the_report_shows_r2_against_the_ceilings_and_mse_lower_is_better(regression_run):
    run_dir, _ = regression_run
    html = (run_dir / "report.html").read_text()
    m = _summary(run_dir)
    best = m[("03_fusion_comparison", "best_fusion_method")]
    assert (
        f"Best fusion method <b>{best}</b> reaches test R^2 <b>{float(m[('03_fusion_comparison', 'best_fusion_r2')]):.3f}</b>"
        in html
    )
    assert "lower is better" in html and "R^2 ceiling" in html and "Documented ceilings of the target (R^2)" in html
    assert f"reaches test R^2 <b>{float(m[('05_evaluate', 'test_r2')]):.3f}</b>" in html  # the final model
    assert "<figure id='fig-predicted_vs_true'>" in html and "fig-confusion_matrix" not in html
    assert "test accuracy" not in html
